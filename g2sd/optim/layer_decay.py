"""Layer-wise learning-rate decay driven by the model's own layer depth.

Fine-tuning MAE / G2SD students (Huang et al., "Generic-to-Specific Distillation of
Masked Autoencoders", CVPR 2023, arXiv 2302.14771) uses BEiT-style layer decay: the
parameters of layer ``i`` of ``L`` layer ids train with ``lr * rate ** (L - 1 - i)``
(classification 0.75, detection 0.7, segmentation 0.65).

The layer id of a parameter is never guessed from its name here: it comes from the
backbone's ``get_layer_depth(name) -> (layer_id, num_layers)`` (mmpretrain's
convention, implemented by :class:`g2sd.models.VisionTransformer`). This module has no
mmengine dependency; :class:`g2sd.engine.optim.LayerDecayOptimWrapperConstructor` wraps
it for configs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

__all__ = [
    'BACKBONE_ATTRS',
    'DETECTRON2_NORM_TYPES',
    'WEIGHT_DECAY_RULES',
    'find_layer_depth_module',
    'layer_decay_param_groups',
]

#: ``weight_decay_rule`` values of :func:`layer_decay_param_groups`.
WEIGHT_DECAY_RULES = ('default', 'detectron2', 'detectron2_all_norms')

#: detectron2's ``norm_module_types`` (``detectron2/solver/build.py``,
#: ``get_default_optimizer_params``): parameters of these modules get ``weight_decay_norm``.
#: detectron2's own channel ``LayerNorm`` (SimpleFeaturePyramid, ViTDet heads) is a plain
#: ``nn.Module``, not listed, so it is decayed there.
DETECTRON2_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)

#: mmcv's ``_abbr_`` of norm layers (``g2sd.LN2d`` has ``'ln'``).
_NORM_ABBRS = frozenset({'bn', 'gn', 'ln', 'in'})

#: Attribute names followed, in this order, when looking for the module that defines
#: ``get_layer_depth``: DDP wrapper -> model wrapper -> student -> backbone -> encoder.
BACKBONE_ATTRS: tuple[str, ...] = ('module', 'algorithm', 'student', 'backbone', 'encoder')


@dataclass(frozen=True)
class _Walk:
    module: nn.Module
    prefix: str  # dotted path from the root model to ``module`` ('' or ending with '.')
    path: tuple[tuple[str, nn.Module], ...]  # (prefix, module) from the root to ``module``


def find_layer_depth_module(model: nn.Module, max_depth: int = 8) -> tuple[nn.Module, str]:
    """Find the sub-module that defines ``get_layer_depth`` and its name prefix.

    Starting at ``model``, the walk stops at the first module with a callable
    ``get_layer_depth``; otherwise it descends into the first attribute of
    :data:`BACKBONE_ATTRS` (``module``, ``algorithm``, ``student``, ``backbone``,
    ``encoder``) that is an ``nn.Module`` registered as a child, and repeats.

    Args:
        model: Root model (possibly DDP-wrapped).
        max_depth: Maximum number of descents.

    Returns:
        (backbone, prefix) where ``prefix`` is the dotted path from ``model`` to the
        backbone, ending with ``'.'`` (or ``''`` when ``model`` itself is the backbone).

    Raises:
        TypeError: No module along the walk defines ``get_layer_depth``.
    """
    walk = _walk(model, max_depth)
    return walk.module, walk.prefix


def _walk(model: nn.Module, max_depth: int) -> _Walk:
    node, prefix, path, tried = model, '', [('', model)], [type(model).__name__]
    for _ in range(max_depth + 1):
        if callable(getattr(node, 'get_layer_depth', None)):
            return _Walk(node, prefix, tuple(path))
        children = dict(node.named_children())
        nxt = next((a for a in BACKBONE_ATTRS if isinstance(children.get(a), nn.Module)), None)
        if nxt is None:
            break
        node, prefix = children[nxt], f'{prefix}{nxt}.'
        path.append((prefix, node))
        tried.append(f'{prefix[:-1]} ({type(node).__name__})')
    raise TypeError(
        'layer-wise lr decay needs a module with get_layer_depth(name); none found on the '
        f'walk {" -> ".join(tried)} (followed attributes {BACKBONE_ATTRS})'
    )


def _no_decay_names(walk: _Walk) -> set[str]:
    """Full parameter names listed by ``no_weight_decay()`` of every module on the walk."""
    names: set[str] = set()
    for prefix, mod in walk.path:
        fn = getattr(mod, 'no_weight_decay', None)
        if callable(fn):
            names.update(f'{prefix}{n}' for n in fn())
    return names


def _match_custom(name: str, custom_keys: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    hits = [k for k in custom_keys if k in name]
    if not hits:
        return {}
    return dict(custom_keys[max(hits, key=len)])


def _is_norm(module: nn.Module, all_norms: bool) -> bool:
    if isinstance(module, DETECTRON2_NORM_TYPES):
        return True
    return all_norms and getattr(type(module), '_abbr_', None) in _NORM_ABBRS


def _detectron2_no_decay(model: nn.Module, all_norms: bool) -> set[int]:
    """Ids of parameters detectron2's ViTDet recipe does not decay.

    ``weight_decay_norm=0`` (parameters owned by a norm module) and the override
    ``{'pos_embed': {'weight_decay': 0.0}}`` (matched on the parameter's own name).
    """
    ids: set[int] = set()
    for module in model.modules():
        norm = _is_norm(module, all_norms)
        for leaf, param in module.named_parameters(recurse=False):
            if norm or leaf == 'pos_embed':
                ids.add(id(param))
    return ids


def layer_decay_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    layer_decay_rate: float,
    no_weight_decay: Iterable[str] = (),
    custom_keys: Mapping[str, Mapping[str, float]] | None = None,
    weight_decay_rule: Literal['default', 'detectron2', 'detectron2_all_norms'] = 'default',
) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise lr decay and the usual weight-decay exemptions.

    Layer ids come from ``backbone.get_layer_depth(name)`` where ``backbone`` is found by
    :func:`find_layer_depth_module` (walk ``model`` -> ``.module`` (DDP) ->
    ``.algorithm`` / ``.student`` / ``.backbone`` / ``.encoder``) and ``name`` is the
    parameter name relative to it. Parameters outside that backbone (necks, heads,
    adapters, projectors) get the top id ``num_layers - 1``, i.e. scale 1.

    ``lr = base_lr * lr_scale * lr_mult`` with
    ``lr_scale = layer_decay_rate ** (num_layers - 1 - layer_id)``; mmengine parameter
    schedulers then rescale every group's lr proportionally.

    Weight decay is 0 for: 1-D parameters (norms, biases, scalars), names ending in
    ``.bias``, the names returned by ``no_weight_decay()`` of any module on the walk
    (exact names relative to that module, timm convention; e.g. the ViT's ``pos_embed``
    and ``cls_token``), and every name containing one of ``no_weight_decay`` (substring
    match on the full parameter name). Parameters with ``requires_grad=False`` are left
    out.

    ``weight_decay_rule='detectron2'`` follows detectron2's ViTDet recipe instead
    (``get_default_optimizer_params(weight_decay_norm=0)`` plus the ``pos_embed`` override
    of ``projects/ViTDet/configs``): weight decay is 0 exactly for parameters of the
    :data:`DETECTRON2_NORM_TYPES` modules (the ViT's LayerNorms, BN / GN of heads) and for
    parameters named ``pos_embed``; biases, ``rel_pos_h`` / ``rel_pos_w`` and other 1-D
    parameters are decayed; ``no_weight_decay`` substrings still apply.
    ``'detectron2_all_norms'`` also exempts modules whose class has an mmcv norm ``_abbr_``
    (``'ln'``, ``'bn'``, ``'gn'``, ``'in'``), i.e. ``g2sd.LN2d`` of the neck and heads, which
    detectron2's own channel LayerNorm (not in its list) does not get.

    Args:
        model: The model to optimise (possibly DDP-wrapped).
        base_lr: Learning rate of the top layer.
        weight_decay: Weight decay of decayed parameters.
        layer_decay_rate: Decay factor per layer, in (0, 1].
        no_weight_decay: Extra substrings of parameter names exempt from weight decay.
        custom_keys: ``{substring: dict(lr_mult=..., decay_mult=...)}``; the longest
            substring contained in a parameter name wins; multiplies lr and weight decay.
        weight_decay_rule: ``'default'`` (timm / MAE: no decay on 1-D, biases and
            ``no_weight_decay()`` names), ``'detectron2'`` or ``'detectron2_all_norms'``
            (see above).

    Returns:
        One dict per (layer id, weight decay, lr multiplier) with keys ``params``, ``lr``,
        ``lr_scale``, ``weight_decay``, ``layer_id``, ``group_name`` and ``names``,
        ordered by layer id (decayed group first).

    Raises:
        ValueError: ``layer_decay_rate`` outside (0, 1], negative lr / weight decay, an
            unknown ``weight_decay_rule``, or a layer id outside ``[0, num_layers)``.
        TypeError: No module defines ``get_layer_depth``, or a bad ``custom_keys`` entry.
    """
    if not 0.0 < layer_decay_rate <= 1.0:
        raise ValueError(f'layer_decay_rate must be in (0, 1], got {layer_decay_rate!r}')
    if base_lr < 0:
        raise ValueError(f'base_lr must be >= 0, got {base_lr!r}')
    if weight_decay < 0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay!r}')
    if weight_decay_rule not in WEIGHT_DECAY_RULES:
        raise ValueError(
            f'weight_decay_rule must be one of {WEIGHT_DECAY_RULES}, got {weight_decay_rule!r}'
        )
    if isinstance(no_weight_decay, str):
        no_weight_decay = (no_weight_decay,)
    extra_no_wd = tuple(no_weight_decay)
    custom_keys = dict(custom_keys or {})
    for key, val in custom_keys.items():
        if not isinstance(val, Mapping) or set(val) - {'lr_mult', 'decay_mult'}:
            raise TypeError(
                f'custom_keys[{key!r}] must be a dict with lr_mult / decay_mult, got {val!r}'
            )

    walk = _walk(model, max_depth=8)
    backbone, prefix = walk.module, walk.prefix
    model_no_wd = _no_decay_names(walk)
    d2_no_wd = (
        None
        if weight_decay_rule == 'default'
        else _detectron2_no_decay(model, weight_decay_rule == 'detectron2_all_norms')
    )
    num_layers = backbone.get_layer_depth(next(iter(dict(backbone.named_parameters())), ''))[1]

    groups: dict[tuple[int, float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if prefix and name.startswith(prefix):
            layer_id, n_layers = backbone.get_layer_depth(name[len(prefix) :])
            if n_layers != num_layers:
                raise ValueError(
                    f'get_layer_depth({name[len(prefix) :]!r}) reports {n_layers} layers, '
                    f'others {num_layers}'
                )
        elif not prefix:
            layer_id, _ = backbone.get_layer_depth(name)
        else:
            layer_id = num_layers - 1
        if not 0 <= layer_id < num_layers:
            raise ValueError(f'layer id {layer_id} of {name!r} is outside [0, {num_layers})')
        if d2_no_wd is None:
            no_wd = (
                param.ndim <= 1
                or name.endswith('.bias')
                or name in model_no_wd
                or any(s in name for s in extra_no_wd)
            )
        else:
            no_wd = id(param) in d2_no_wd or any(s in name for s in extra_no_wd)
        custom = _match_custom(name, custom_keys)
        lr_mult = float(custom.get('lr_mult', 1.0))
        wd = 0.0 if no_wd else weight_decay * float(custom.get('decay_mult', 1.0))
        scale = layer_decay_rate ** (num_layers - 1 - layer_id)
        key = (layer_id, wd, lr_mult)
        if key not in groups:
            tag = 'decay' if wd > 0 else 'no_decay'
            suffix = '' if lr_mult == 1.0 else f'_lr{lr_mult:g}'
            groups[key] = dict(
                params=[],
                names=[],
                lr=base_lr * scale * lr_mult,
                lr_scale=scale,
                weight_decay=wd,
                layer_id=layer_id,
                group_name=f'layer_{layer_id}_{tag}{suffix}',
            )
        groups[key]['params'].append(param)
        groups[key]['names'].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], -k[1], k[2]))]
