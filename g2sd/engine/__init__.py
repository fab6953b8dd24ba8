"""mmengine adapters of g2sd (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771).

Importing this package registers, in the ``g2sd`` registry scope: ``g2sd.PretrainModel``
(deprecated), ``g2sd.LayerDecayOptimWrapperConstructor``, ``g2sd.CPUAmpOptimWrapper``,
``g2sd.WarmupCosineLR``, ``g2sd.FashionMNIST``, ``g2sd.ImageFolder``, the torchvision transforms and
``g2sd.TwoViews``, and the runner hooks ``g2sd.TeacherCheckHook``, ``g2sd.SaveStudentHook``,
``g2sd.DistillWeightHook``, ``g2sd.StopDistillHook`` and ``g2sd.TeacherValHook``.
:mod:`g2sd.engine.canvas` (imported on its own, not here) pastes Fashion-MNIST items on canvases
for the detection and segmentation proxy sets (``tools/dataset/make_fmnist_{coco,ade}.py``).
"""

from g2sd.engine.datasets import FashionMNIST, ImageFolder
from g2sd.engine.hooks import (
    DistillWeightHook,
    SaveStudentHook,
    StopDistillHook,
    TeacherCheckHook,
    TeacherValHook,
)
from g2sd.engine.model import PretrainModel
from g2sd.engine.optim import CPUAmpOptimWrapper, LayerDecayOptimWrapperConstructor
from g2sd.engine.runner import G2SDRunner, configure_amp, setup_cpu_distributed
from g2sd.engine.schedulers import WarmupCosineLR
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
    'WarmupCosineLR',
    'build_pipeline',
    'configure_amp',
    'setup_cpu_distributed',
]
