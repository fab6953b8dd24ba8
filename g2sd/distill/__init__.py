"""Distillation: generic distillers (G2SD, D-MAE, TinyMIM, MAE), the task-specific KD wrapper,
losses, frozen teachers.

Importing this package registers the distillers and the model classes in the ``g2sd``
registry scope (``type='g2sd.G2SDDistiller'``, ``type='g2sd.MaskedAutoencoderViT'``...).
"""

from g2sd.distill.generic import (
    BaseGenericDistiller,
    DMAEDistiller,
    G2SDDistiller,
    MAEPretrainer,
    TinyMIMDistiller,
)
from g2sd.distill.kd import ConvAdapter, DistillModel, LinearAdapter, load_teacher_checkpoint
from g2sd.distill.teacher import TeacherHolderMixin, build_module, freeze
from g2sd.models import MaskedAutoencoderViT, VisionTransformer
from g2sd.registry import MODELS

MODELS.register_module(name='VisionTransformer', module=VisionTransformer)
MODELS.register_module(name='MaskedAutoencoderViT', module=MaskedAutoencoderViT)

__all__ = [
    'BaseGenericDistiller',
    'ConvAdapter',
    'DMAEDistiller',
    'DistillModel',
    'G2SDDistiller',
    'LinearAdapter',
    'MAEPretrainer',
    'TeacherHolderMixin',
    'TinyMIMDistiller',
    'build_module',
    'freeze',
    'load_teacher_checkpoint',
]
