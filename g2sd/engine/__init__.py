"""mmengine adapters of g2sd (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771).

Importing this package registers, in the ``g2sd`` registry scope: ``g2sd.PretrainModel``,
``g2sd.LayerDecayOptimWrapperConstructor``, ``g2sd.CPUAmpOptimWrapper``,
``g2sd.FashionMNIST``, ``g2sd.ImageFolder``, the torchvision transforms and
``g2sd.TwoViews``, ``g2sd.TeacherCheckHook``, ``g2sd.SaveStudentHook`` and the KD scheduling
hooks ``g2sd.DistillWeightHook``, ``g2sd.StopDistillHook``, ``g2sd.TeacherValHook``.
"""

from g2sd.engine.datasets import FashionMNIST, ImageFolder
from g2sd.engine.hooks import SaveStudentHook, TeacherCheckHook
from g2sd.engine.kd_hooks import DistillWeightHook, StopDistillHook, TeacherValHook
from g2sd.engine.model import PretrainModel
from g2sd.engine.optim import CPUAmpOptimWrapper, LayerDecayOptimWrapperConstructor
from g2sd.engine.runner import G2SDRunner, configure_amp, setup_cpu_distributed
from g2sd.engine.transforms import TwoViews, build_pipeline

__all__ = [
    'CPUAmpOptimWrapper',
    'DistillWeightHook',
    'FashionMNIST',
    'G2SDRunner',
    'ImageFolder',
    'LayerDecayOptimWrapperConstructor',
    'PretrainModel',
    'SaveStudentHook',
    'StopDistillHook',
    'TeacherCheckHook',
    'TeacherValHook',
    'TwoViews',
    'build_pipeline',
    'configure_amp',
    'setup_cpu_distributed',
]
