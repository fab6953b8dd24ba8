"""g2sd.cls: classification with task-specific distillation (DeiT-style distillation token).

Specific distillation for classification in G2SD (Huang et al., "Generic-to-Specific
Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771). Installed as
``g2sd.cls`` (``package_dir`` in setup.cfg); configs import it with
``custom_imports=dict(imports=['g2sd.engine', 'g2sd.distill', 'g2sd.cls'])``.

Importing it registers, in the ``g2sd`` scope: ``g2sd.DistilledVisionTransformer``,
``g2sd.ViTClassifier``, ``g2sd.ClsDataPreprocessor``, ``g2sd.TopKAccuracy``,
``g2sd.TimmTransform``, the timm names ``g2sd_vit_*_distilled_patch16_224`` and (through
:mod:`g2sd.distill` and :mod:`g2sd.engine`) the shared distillation wrapper
``g2sd.DistillModel``, its losses and its runner hooks.
"""

import g2sd.distill  # noqa: F401  (registers g2sd.DistillModel and the losses)
import g2sd.engine  # noqa: F401  (registers the distillation runner hooks)

from .classifier import ClsDataPreprocessor, ViTClassifier, soft_target_cross_entropy
from .metrics import TopKAccuracy, imagenet_class_indices, topk_correct
from .timm_models import distilled_checkpoint_filter_fn
from .transforms import TimmTransform
from .vit import DIST_KEYS, DistilledVisionTransformer

__all__ = [
    'DIST_KEYS',
    'ClsDataPreprocessor',
    'DistilledVisionTransformer',
    'TimmTransform',
    'TopKAccuracy',
    'ViTClassifier',
    'distilled_checkpoint_filter_fn',
    'imagenet_class_indices',
    'soft_target_cross_entropy',
    'topk_correct',
]
