"""timm's ImageNet transforms as a g2sd pipeline step (``type='g2sd.TimmTransform'``).

The classification fine-tuning of G2SD (Huang et al., "Generic-to-Specific Distillation of
Masked Autoencoders", CVPR 2023, arXiv 2302.14771) uses MAE's ``build_transform``, i.e.
``timm.data.create_transform`` with RandomResizedCrop(224, bicubic), flip, RandAugment
``rand-m9-mstd0.5-inc1`` and random erasing 0.25 (pixel mode, one erase) for training, and
resize 256 / center crop 224 (bicubic) for evaluation. torchvision's ``RandAugment`` is a
different policy, so the timm transform is used as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from g2sd.registry import TRANSFORMS

__all__ = ['TimmTransform']


@TRANSFORMS.register_module()
def TimmTransform(  # noqa: N802  (registered like a class)
    input_size: int | Sequence[int] = 224,
    is_training: bool = False,
    **kwargs: Any,
) -> Any:
    """``timm.data.create_transform(input_size, is_training, **kwargs)`` (PIL -> tensor).

    Args:
        input_size: Output size (int or (C, H, W) / (H, W)).
        is_training: Training augmentation (crop, flip, auto-augment, erasing) or the eval
            resize + center crop.
        **kwargs: ``create_transform`` options, e.g. ``auto_augment='rand-m9-mstd0.5-inc1'``,
            ``re_prob=0.25``, ``re_mode='pixel'``, ``re_count=1``,
            ``interpolation='bicubic'``, ``color_jitter=None``, ``crop_pct=224 / 256``,
            ``mean``, ``std``.

    Returns:
        A ``torchvision.transforms.Compose``.
    """
    from timm.data import create_transform

    if isinstance(input_size, list):
        input_size = tuple(input_size)
    for key in ('mean', 'std', 'scale', 'ratio'):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return create_transform(input_size, is_training=is_training, **kwargs)
