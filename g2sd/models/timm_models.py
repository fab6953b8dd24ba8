"""timm registration of the g2sd ViTs (``g2sd_``-prefixed names only).

Importing this module registers three timm entry points that build
:class:`g2sd.models.vit.VisionTransformer` (timm / MAE key layout):

============================== ============================
name                           dim / depth / heads
============================== ============================
``g2sd_vit_tiny_patch16_224``  192 / 12 / 3  (G2SD-Ti)
``g2sd_vit_small_patch16_224`` 384 / 12 / 6  (G2SD-S)
``g2sd_vit_base_patch16_224``  768 / 12 / 12 (MAE ViT-B teacher)
============================== ============================

``features_only=True`` gives timm's feature getter over
:meth:`~g2sd.models.vit.VisionTransformer.forward_intermediates` (``out_indices``, default
the last 3 blocks; (B, C, H/16, W/16) maps).

Tags (no url / hub id; weights come from a local file)::

    .gd_in1k     after generic distillation, no classifier (num_classes=0)
    .gd_sd_in1k  after task-specific distillation on ImageNet-1k (1000-class head)

Example::

    import timm
    import g2sd.models.timm_models  # noqa: F401  (registers the names)

    model = timm.create_model(
        'g2sd_vit_small_patch16_224', pretrained=True,
        pretrained_cfg_overlay=dict(file='g2sd_vit_small_gd.safetensors'))

timm reads ``file=`` itself (``torch.load(weights_only=True)`` with ``argparse.Namespace``
allowed, or safetensors), picks ``state_dict`` / ``model`` and strips ``module.``; the
``pretrained_filter_fn`` then passes the weights through :mod:`g2sd.checkpoint`, so
extracted backbones, MAE (full / encoder-only / fine-tuned), official G2SD GD files and our
distiller state dicts all load. mmengine training checkpoints hold mmengine objects that
timm's safe loader refuses: export them first with ``tools/convert/extract_student.py``.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

# Module import (not ``from g2sd.checkpoint import ...``): g2sd.checkpoint imports
# g2sd.models, whose __init__ imports this module, so the name is resolved at call time.
from g2sd import checkpoint as g2sd_checkpoint
from g2sd.models.vit import VisionTransformer

__all__ = ['checkpoint_filter_fn', 'create_model']


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm ``pretrained_filter_fn``: any g2sd-known format -> exactly the model's keys.

    Verifies the weights as :func:`g2sd.checkpoint.load_pretrained` does for
    ``use='backbone'`` (decoder / projector keys dropped, ``pos_embed`` resampled, a missing
    or mis-shaped ``head`` / ``fc_norm`` kept at the model's initialisation, any other
    difference an error) and returns a complete state dict for timm's strict load.

    Args:
        state_dict: What timm read from the pretrained file.
        model: The freshly built model.

    Returns:
        State dict with the model's keys.

    Raises:
        g2sd.checkpoint.CheckpointError: Unknown format or keys that do not fit.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    source = cfg.get('file') or cfg.get('architecture') or 'timm pretrained weights'
    ready, _ = g2sd_checkpoint.prepare_backbone_state_dict(model, state_dict, source=str(source))
    return ready


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    # features_only=True: timm's getter wrapper over forward_intermediates /
    # prune_intermediate_layers, the last 3 blocks by default (as timm's own ViTs).
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2302.14771',
        'paper_name': 'Generic-to-Specific Distillation of Masked Autoencoders',
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        f'g2sd_vit_{size}_patch16_224.{tag}': _cfg(num_classes=classes)
        for size in ('tiny', 'small', 'base')
        for tag, classes in (('gd_in1k', 0), ('gd_sd_in1k', 1000))
    }
)


@register_model
def g2sd_vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """G2SD ViT-Tiny (192-d, 12 blocks, 3 heads), patch 16, 224 px."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create('g2sd_vit_tiny_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def g2sd_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """G2SD ViT-Small (384-d, 12 blocks, 6 heads), patch 16, 224 px."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create('g2sd_vit_small_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def g2sd_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Base (768-d, 12 blocks, 12 heads), patch 16, 224 px: the MAE teacher's encoder."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create('g2sd_vit_base_patch16_224', pretrained, **dict(args, **kwargs))


def create_model(
    model_name: str, pretrained: bool = False, *, file: str | None = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model`` that is sure the g2sd names are registered.

    Args:
        model_name: timm name, e.g. ``'g2sd_vit_small_patch16_224'`` (optionally ``.tag``).
        pretrained: Load pretrained weights (needs ``file`` for g2sd names).
        file: Local weight file; implies ``pretrained=True`` (sets
            ``pretrained_cfg_overlay=dict(file=...)``).
        **kwargs: Passed to ``timm.create_model``.

    Returns:
        The model.
    """
    if file is not None:
        overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
        overlay['file'] = str(file)
        kwargs['pretrained_cfg_overlay'] = overlay
        pretrained = True
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)
