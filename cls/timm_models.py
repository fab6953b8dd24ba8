"""timm registration of the distillation-token students (``g2sd_``-prefixed names only).

After specific distillation (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771) a student has
a class-token head and a distillation head; inference averages them. Exported with the
distillation head dropped, it loads into the plain ``g2sd_vit_{tiny,small,base}_patch16_224``
of :mod:`g2sd.models.timm_models` (class-token head only). Exported with it, it loads into the
names registered here, which build :class:`g2sd.cls.vit.DistilledVisionTransformer`:

======================================== ============================
name                                     dim / depth / heads
======================================== ============================
``g2sd_vit_tiny_distilled_patch16_224``  192 / 12 / 3  (G2SD-Ti + SD)
``g2sd_vit_small_distilled_patch16_224`` 384 / 12 / 6  (G2SD-S + SD)
``g2sd_vit_base_distilled_patch16_224``  768 / 12 / 12
======================================== ============================

Tag ``.gd_sd_in1k`` (1000 classes). Pass ``dist_token_position='deit'`` for students trained
with DeiT's placement (``tools/convert/export_cls_timm.py`` prints the exact call)::

    import timm
    import g2sd.cls.timm_models  # noqa: F401  (registers the names)

    model = timm.create_model('g2sd_vit_small_distilled_patch16_224', pretrained=True,
                              pretrained_cfg_overlay=dict(file='g2sd_vit_s_sd.safetensors'))
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from g2sd.checkpoint import load_pretrained
from g2sd.models.timm_models import _cfg

from .vit import DIST_KEYS, DistilledVisionTransformer

__all__ = ['distilled_checkpoint_filter_fn']


def distilled_checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm ``pretrained_filter_fn``: verify strictly with g2sd's loader, return a full dict.

    Loads ``state_dict`` into ``model`` through :func:`g2sd.checkpoint.load_pretrained`
    (``use='backbone'``; a missing distillation token / head is allowed, e.g. a GD
    checkpoint, and keeps its initialisation) and returns the model's complete state dict
    for timm's strict load.
    """
    load_pretrained(model, state_dict, use='backbone', allow_missing=DIST_KEYS)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> DistilledVisionTransformer:
    return build_model_with_cfg(
        DistilledVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=distilled_checkpoint_filter_fn,
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        f'g2sd_vit_{size}_distilled_patch16_224.gd_sd_in1k': _cfg(
            num_classes=1000, classifier=('head', 'head_dist'), crop_pct=0.875
        )
        for size in ('tiny', 'small', 'base')
    }
)


@register_model
def g2sd_vit_tiny_distilled_patch16_224(
    pretrained: bool = False, **kwargs: Any
) -> DistilledVisionTransformer:
    """G2SD ViT-Tiny with distillation token and head (192-d, 12 blocks, 3 heads)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create('g2sd_vit_tiny_distilled_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def g2sd_vit_small_distilled_patch16_224(
    pretrained: bool = False, **kwargs: Any
) -> DistilledVisionTransformer:
    """G2SD ViT-Small with distillation token and head (384-d, 12 blocks, 6 heads)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create('g2sd_vit_small_distilled_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def g2sd_vit_base_distilled_patch16_224(
    pretrained: bool = False, **kwargs: Any
) -> DistilledVisionTransformer:
    """ViT-Base with distillation token and head (768-d, 12 blocks, 12 heads)."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create('g2sd_vit_base_distilled_patch16_224', pretrained, **dict(args, **kwargs))
