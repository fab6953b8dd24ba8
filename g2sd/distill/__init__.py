"""Distillation of G2SD (Huang et al., CVPR 2023, arXiv 2302.14771): one base, two stages.

* :mod:`g2sd.distill.base`: :class:`DistillerBase` (teacher building + strict loading,
  freezing and out-of-tree holding, ``teacher_forward``, loss parsing with the finite check).
* :mod:`g2sd.distill.generic`: the generic distillers G2SD, D-MAE, TinyMIM and MAE.
* :mod:`g2sd.distill.specific`: the task-specific wrapper :class:`DistillModel`, with
  :mod:`g2sd.distill.recorders` (module outputs captured during a pass) and adapters.
* :mod:`g2sd.distill.losses`: every distillation loss.

Importing this package registers the distillers, the wrapper, the losses and the model
classes in the ``g2sd`` registry scope (``type='g2sd.G2SDDistiller'``,
``type='g2sd.MaskedAutoencoderViT'``...).
"""

from g2sd.distill import losses  # noqa: F401  (registers the losses)
from g2sd.distill.base import (
    DistillerBase,
    FiniteLossParsing,
    TeacherHolder,
    build_model,
    check_finite_loss,
    freeze,
)
from g2sd.distill.generic import (
    BaseGenericDistiller,
    DMAEDistiller,
    G2SDDistiller,
    MAEPretrainer,
    TinyMIMDistiller,
)
from g2sd.distill.losses import ChannelWiseDivergence, PixelWiseKLDivergence, pixel_wise_kl
from g2sd.distill.recorders import Recorder, select
from g2sd.distill.specific import (
    ConvAdapter,
    DistillModel,
    LinearAdapter,
    MultiLevelConvAdapter,
    plain_student_state_dict,
)
from g2sd.models import MaskedAutoencoderViT, VisionTransformer
from g2sd.registry import MODELS

MODELS.register_module(name='VisionTransformer', module=VisionTransformer)
MODELS.register_module(name='MaskedAutoencoderViT', module=MaskedAutoencoderViT)

__all__ = [
    'BaseGenericDistiller',
    'ChannelWiseDivergence',
    'ConvAdapter',
    'MultiLevelConvAdapter',
    'DMAEDistiller',
    'DistillModel',
    'DistillerBase',
    'FiniteLossParsing',
    'G2SDDistiller',
    'LinearAdapter',
    'MAEPretrainer',
    'PixelWiseKLDivergence',
    'Recorder',
    'TeacherHolder',
    'TinyMIMDistiller',
    'build_model',
    'check_finite_loss',
    'freeze',
    'pixel_wise_kl',
    'plain_student_state_dict',
    'select',
]
