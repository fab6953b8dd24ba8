"""detectron2 <-> mmdet key conversion for ViTDet Mask R-CNN, and the ``'detector'`` load use.

The detection experiments of G2SD (Huang et al., "Generic-to-Specific Distillation of
Masked Autoencoders", CVPR 2023, arXiv 2302.14771) start from detectron2's ViTDet
(Li et al., ECCV 2022; ``projects/ViTDet``, ``configs/common/models/mask_rcnn_vitdet.py``):
the ViTDet-B teacher (51.6 box / 45.9 mask AP, ``model_final_61ccd1.pkl``) is a
detectron2 file. g2sd trains the same detector as ``mmdet.MaskRCNN`` with
:class:`g2sd.ViTDetBackbone`, :class:`g2sd.SimpleFPN`, ``RPNHead(num_convs=2)``,
``Shared4Conv1FCBBoxHead`` and ``FCNMaskHead`` (LayerNorm ``g2sd.LN2d``, ConvModule
name ``ln``). This module maps the keys one to one (pure functions on flat state dicts,
values untouched):

=============================================== ===============================================
detectron2                                      mmdet (g2sd)
=============================================== ===============================================
``backbone.net.X``                              ``backbone.X`` (same ViT names)
``backbone.simfp_{s}.{j}`` (scale layers)       ``neck.scale_layers.{l}.{j}``
``backbone.simfp_{s}.{n}`` / ``.{n+1}``         ``neck.lateral_convs.{l}`` / ``neck.fpn_convs.{l}``
(last two, Conv2d ``weight`` + ``norm.*``)      (``conv.weight`` + ``ln.*``)
``proposal_generator.rpn_head.conv.conv{k}``    ``rpn_head.rpn_conv.{k}.conv`` (ConvModule)
``proposal_generator.rpn_head.conv`` (1 conv)   ``rpn_head.rpn_conv``
``...rpn_head.objectness_logits``               ``rpn_head.rpn_cls``
``...rpn_head.anchor_deltas``                   ``rpn_head.rpn_reg``
``roi_heads.box_head.conv{k}`` (+ ``norm.*``)   ``roi_head.bbox_head.shared_convs.{k-1}.conv``
                                                (+ ``ln.*``)
``roi_heads.box_head.fc{k}``                    ``roi_head.bbox_head.shared_fcs.{k-1}``
``roi_heads.box_predictor.cls_score``           ``roi_head.bbox_head.fc_cls``
``roi_heads.box_predictor.bbox_pred``           ``roi_head.bbox_head.fc_reg``
``roi_heads.mask_head.mask_fcn{k}`` (+ norm)    ``roi_head.mask_head.convs.{k-1}.conv`` (+ ``ln``)
``roi_heads.mask_head.deconv``                  ``roi_head.mask_head.upsample``
``roi_heads.mask_head.predictor``               ``roi_head.mask_head.conv_logits``
=============================================== ===============================================

Pyramid levels: detectron2 names a level by its stage ``s = log2(stride)`` (``simfp_2`` ..
``simfp_5`` for scales 4, 2, 1, 0.5 at patch 16); g2sd by its index ``l`` in
``scale_factors`` (0 .. 3). ``simfp_5.0`` is the max-pool (no weights). Levels are sorted
by stage, so ``l = s - s_min``. Going back, the stage needs the scale of each level: it is
read from the deconvolutions of ``neck.scale_layers`` (4.0: ``.0`` / ``.1`` / ``.3``,
2.0: ``.0``) and the patch size from ``backbone.patch_embed.proj.weight`` (or passed).

Semantic equivalences (checked against detectron2 ``main`` and mmdet 3.3.0), so the
converted weights compute the same detector:

* Classes: detectron2 ``cls_score`` has ``K + 1`` outputs with background **last**
  (``FastRCNNOutputLayers``); mmdet ``fc_cls`` has ``K + 1`` with background last
  (index ``num_classes``). Both order the K classes by the sorted COCO category ids
  (detectron2 ``thing_dataset_id_to_contiguous_id``, mmdet ``CocoDataset.cat2label``).
  ``bbox_pred`` / ``fc_reg`` are class specific (``4K``, class-major) in both; the mask
  predictor / ``conv_logits`` has ``K`` outputs in both.
* Box deltas: detectron2's RoI ``Box2BoxTransform(weights=(10, 10, 5, 5))`` divides the
  prediction by the weights; mmdet's ``DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2,
  0.2), target_means=0)`` multiplies by the stds: the same numbers. The RPN uses
  weights (1, 1, 1, 1) / stds (1, 1, 1, 1). Both use ``w = x2 - x1`` (no +1), centres
  ``x1 + w / 2`` and clamp ``dw, dh`` at ``log(1000 / 16)``.
* Anchors: detectron2 ``sizes=[[32], [64], [128], [256], [512]]``,
  ``aspect_ratios=[0.5, 1, 2]``, ``offset=0`` equals mmdet ``AnchorGenerator(scales=[8],
  ratios=[0.5, 1, 2], strides=[4, 8, 16, 32, 64])`` (``center_offset=0``): both order the 3
  anchors of a location by ratio (one size per level), ratio = h / w, anchors centred on
  ``(x * stride, y * stride)``. ``objectness_logits`` (A channels) and ``anchor_deltas``
  (A * 4, anchor-major, then dx, dy, dw, dh) have the layout of ``rpn_cls`` /
  ``rpn_reg``.
* Layers: every detectron2 ``Conv2d(norm=LN, activation=relu)`` is conv -> LN -> ReLU,
  mmcv ConvModule's order; normed convs have no bias in both (``bias=not conv_norm`` /
  ``bias='auto'``). The box head flattens (C, 7, 7) before ``fc1`` in both. detectron2
  ``ROIAlignV2`` is mmcv ``RoIAlign(aligned=True, sampling_ratio=0)``; detectron2's level
  ``floor(4 + log2(sqrt(area) / 224))`` is mmdet's ``finest_scale=56`` rule.
* Backbone: ``pos_embed`` stays at its pretraining grid (1, 1 + 14 * 14, C) with the
  class slot (detectron2 ``pretrain_use_cls_token=True``); :class:`g2sd.ViTDetBackbone`
  stores it the same way (``pretrain_img_size=224``, ``pretrain_use_cls_token=True``).
  Relative-position tables are resampled on load when the window or input size differs
  (:func:`resample_rel_pos_tables`, the loader's resampling).

Unknown keys (cascade heads, residual blocks, GN heads) raise ``ValueError`` naming them:
every key is consumed, and ``mmdet_to_detectron2(detectron2_to_mmdet(sd)) == sd``.
``pixel_mean`` / ``pixel_std`` / ``anchor_generator.cell_anchors.*`` (non-persistent in
detectron2, present in old files) are dropped, as detectron2's own loader ignores them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from g2sd.checkpoint import CheckpointError, UsePlan, register_use, strip_prefixes
from g2sd.checkpoint._common import _listing

__all__ = [
    'detectron2_to_mmdet',
    'is_detectron2_layout',
    'mmdet_to_detectron2',
    'resample_rel_pos_tables',
    'select_detector',
]

logger = logging.getLogger(__name__)

_D2_PREFIXES = ('backbone.net.', 'backbone.simfp_', 'proposal_generator.', 'roi_heads.')
_MM_PREFIXES = ('backbone.', 'neck.', 'rpn_head.', 'roi_head.')
# Non-persistent detectron2 buffers that old files may carry; detectron2 ignores them too.
_D2_IGNORED = re.compile(r'^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\..*)$')
# Keys of the ViT (detectron2 ``ViT`` without residual blocks == g2sd VisionTransformer).
_VIT_KEY = re.compile(
    r'^(pos_embed|patch_embed\.proj\.(weight|bias)|blocks\.\d+\.('
    r'norm[12]\.(weight|bias)|attn\.(qkv|proj)\.(weight|bias)|attn\.rel_pos_[hw]|'
    r'mlp\.fc[12]\.(weight|bias)))$'
)
_WB = r'(weight|bias)'
_NORM_NAME = 'ln'  # ConvModule's name of g2sd.LN2d (its ``_abbr_``)

# detectron2 (regex) -> mmdet (format) for the heads; groups: index, parameter.
_D2_HEADS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (
        re.compile(rf'^proposal_generator\.rpn_head\.conv\.conv(\d+)\.{_WB}$'),
        lambda m: f'rpn_head.rpn_conv.{m[1]}.conv.{m[2]}',
    ),
    (
        re.compile(rf'^proposal_generator\.rpn_head\.conv\.{_WB}$'),
        lambda m: f'rpn_head.rpn_conv.{m[1]}',
    ),
    (
        re.compile(rf'^proposal_generator\.rpn_head\.objectness_logits\.{_WB}$'),
        lambda m: f'rpn_head.rpn_cls.{m[1]}',
    ),
    (
        re.compile(rf'^proposal_generator\.rpn_head\.anchor_deltas\.{_WB}$'),
        lambda m: f'rpn_head.rpn_reg.{m[1]}',
    ),
    (
        re.compile(rf'^roi_heads\.box_head\.conv(\d+)\.{_WB}$'),
        lambda m: f'roi_head.bbox_head.shared_convs.{int(m[1]) - 1}.conv.{m[2]}',
    ),
    (
        re.compile(rf'^roi_heads\.box_head\.conv(\d+)\.norm\.{_WB}$'),
        lambda m: f'roi_head.bbox_head.shared_convs.{int(m[1]) - 1}.{_NORM_NAME}.{m[2]}',
    ),
    (
        re.compile(rf'^roi_heads\.box_head\.fc(\d+)\.{_WB}$'),
        lambda m: f'roi_head.bbox_head.shared_fcs.{int(m[1]) - 1}.{m[2]}',
    ),
    (
        re.compile(rf'^roi_heads\.box_predictor\.cls_score\.{_WB}$'),
        lambda m: f'roi_head.bbox_head.fc_cls.{m[1]}',
    ),
    (
        re.compile(rf'^roi_heads\.box_predictor\.bbox_pred\.{_WB}$'),
        lambda m: f'roi_head.bbox_head.fc_reg.{m[1]}',
    ),
    (
        re.compile(rf'^roi_heads\.mask_head\.mask_fcn(\d+)\.{_WB}$'),
        lambda m: f'roi_head.mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}',
    ),
    (
        re.compile(rf'^roi_heads\.mask_head\.mask_fcn(\d+)\.norm\.{_WB}$'),
        lambda m: f'roi_head.mask_head.convs.{int(m[1]) - 1}.{_NORM_NAME}.{m[2]}',
    ),
    (
        re.compile(rf'^roi_heads\.mask_head\.deconv\.{_WB}$'),
        lambda m: f'roi_head.mask_head.upsample.{m[1]}',
    ),
    (
        re.compile(rf'^roi_heads\.mask_head\.predictor\.{_WB}$'),
        lambda m: f'roi_head.mask_head.conv_logits.{m[1]}',
    ),
)

_MM_HEADS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (
        re.compile(rf'^rpn_head\.rpn_conv\.(\d+)\.conv\.{_WB}$'),
        lambda m: f'proposal_generator.rpn_head.conv.conv{m[1]}.{m[2]}',
    ),
    (
        re.compile(rf'^rpn_head\.rpn_conv\.{_WB}$'),
        lambda m: f'proposal_generator.rpn_head.conv.{m[1]}',
    ),
    (
        re.compile(rf'^rpn_head\.rpn_cls\.{_WB}$'),
        lambda m: f'proposal_generator.rpn_head.objectness_logits.{m[1]}',
    ),
    (
        re.compile(rf'^rpn_head\.rpn_reg\.{_WB}$'),
        lambda m: f'proposal_generator.rpn_head.anchor_deltas.{m[1]}',
    ),
    (
        re.compile(rf'^roi_head\.bbox_head\.shared_convs\.(\d+)\.conv\.{_WB}$'),
        lambda m: f'roi_heads.box_head.conv{int(m[1]) + 1}.{m[2]}',
    ),
    (
        re.compile(rf'^roi_head\.bbox_head\.shared_convs\.(\d+)\.{_NORM_NAME}\.{_WB}$'),
        lambda m: f'roi_heads.box_head.conv{int(m[1]) + 1}.norm.{m[2]}',
    ),
    (
        re.compile(rf'^roi_head\.bbox_head\.shared_fcs\.(\d+)\.{_WB}$'),
        lambda m: f'roi_heads.box_head.fc{int(m[1]) + 1}.{m[2]}',
    ),
    (
        re.compile(rf'^roi_head\.bbox_head\.fc_cls\.{_WB}$'),
        lambda m: f'roi_heads.box_predictor.cls_score.{m[1]}',
    ),
    (
        re.compile(rf'^roi_head\.bbox_head\.fc_reg\.{_WB}$'),
        lambda m: f'roi_heads.box_predictor.bbox_pred.{m[1]}',
    ),
    (
        re.compile(rf'^roi_head\.mask_head\.convs\.(\d+)\.conv\.{_WB}$'),
        lambda m: f'roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}',
    ),
    (
        re.compile(rf'^roi_head\.mask_head\.convs\.(\d+)\.{_NORM_NAME}\.{_WB}$'),
        lambda m: f'roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.norm.{m[2]}',
    ),
    (
        re.compile(rf'^roi_head\.mask_head\.upsample\.{_WB}$'),
        lambda m: f'roi_heads.mask_head.deconv.{m[1]}',
    ),
    (
        re.compile(rf'^roi_head\.mask_head\.conv_logits\.{_WB}$'),
        lambda m: f'roi_heads.mask_head.predictor.{m[1]}',
    ),
)

_D2_SIMFP = re.compile(rf'^backbone\.simfp_(\d+)\.(\d+)\.(norm\.)?{_WB}$')
_MM_NECK = re.compile(r'^neck\.(scale_layers|lateral_convs|fpn_convs)\.(\d+)\.(.+)$')
# Entries of detectron2's scale layers per scale factor (deconv / LN / GELU / pool).
_D2_SCALE_LAYERS = {4.0: 4, 2.0: 1, 1.0: 0, 0.5: 1}


def is_detectron2_layout(sd: Mapping[str, Any]) -> bool:
    """Whether a flat state dict uses detectron2's ViTDet names (``backbone.net.*`` etc.).

    Args:
        sd: Flat ``{name: tensor}``.

    Returns:
        True when any key starts with ``backbone.net.``, ``backbone.simfp_``,
        ``proposal_generator.`` or ``roi_heads.``.
    """
    return any(isinstance(k, str) and k.startswith(_D2_PREFIXES) for k in sd)


def _unknown(keys: Sequence[str], direction: str, source: str) -> ValueError:
    return ValueError(
        f'{source}: {len(keys)} key(s) have no {direction} counterpart (only ViTDet Mask '
        f'R-CNN with a simple feature pyramid, 2-conv RPN, conv/fc box head and FCN mask '
        f'head converts): {_listing(sorted(keys))}'
    )


def detectron2_to_mmdet(
    sd: Mapping[str, torch.Tensor], *, source: str = 'state dict'
) -> dict[str, torch.Tensor]:
    """Rename a detectron2 ViTDet Mask R-CNN state dict to g2sd's mmdet ``MaskRCNN`` keys.

    Pure key mapping (see the module docstring); the tensors are the same objects. A
    backbone-only file converts to ``backbone.*``.

    Args:
        sd: Flat detectron2 state dict (``checkpoint['model']``).
        source: Name used in error messages.

    Returns:
        New ``{mmdet name: tensor}``.

    Raises:
        ValueError: Keys that have no mmdet counterpart (named), or a mapping collision.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    ignored: list[str] = []
    simfp: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
            continue
        if key.startswith('backbone.net.'):
            rest = key[len('backbone.net.') :]
            if _VIT_KEY.match(rest):
                out['backbone.' + rest] = value
            else:
                unknown.append(key)
            continue
        m = _D2_SIMFP.match(key)
        if m:
            simfp.setdefault(int(m[1]), {})[key[len(f'backbone.simfp_{m[1]}.') :]] = value
            continue
        if _D2_IGNORED.match(key):
            ignored.append(key)
            continue
        for pattern, target in _D2_HEADS:
            hm = pattern.match(key)
            if hm:
                out[target(hm)] = value
                break
        else:
            unknown.append(key)
    for level, stage in enumerate(sorted(simfp)):
        entries = simfp[stage]
        idx = sorted({int(k.split('.')[0]) for k in entries})
        if len(idx) < 2:
            unknown += [f'backbone.simfp_{stage}.{k}' for k in entries]
            continue
        lateral, fpn = idx[-2], idx[-1]
        for k, value in entries.items():
            j_str, rest = k.split('.', 1)
            j = int(j_str)
            norm = rest.startswith('norm.')
            param = rest.split('.')[-1]
            if j in (lateral, fpn):
                mod = 'lateral_convs' if j == lateral else 'fpn_convs'
                sub = f'{_NORM_NAME}.{param}' if norm else f'conv.{param}'
                out[f'neck.{mod}.{level}.{sub}'] = value
            elif norm:
                unknown.append(f'backbone.simfp_{stage}.{k}')
            else:
                out[f'neck.scale_layers.{level}.{j}.{param}'] = value
    if unknown:
        raise _unknown(unknown, 'mmdet', source)
    if ignored:
        logger.info('%s: dropped non-persistent detectron2 buffers: %s', source, _listing(ignored))
    n_in = len(sd) - len(ignored)
    if len(out) != n_in:  # pragma: no cover - every pattern is one to one
        raise ValueError(f'{source}: {n_in} keys mapped to {len(out)} (a collision)')
    return out


def _level_scales(sd: Mapping[str, torch.Tensor], n_levels: int, source: str) -> list[float]:
    """Scale factor of each neck level from the deconvolutions of ``neck.scale_layers``."""
    known: dict[int, float] = {}
    for level in range(n_levels):
        idx = {
            int(k.split('.')[3])
            for k in sd
            if k.startswith(f'neck.scale_layers.{level}.') and k.endswith('.weight')
        }
        if idx == {0, 1, 3}:
            known[level] = 4.0
        elif idx == {0}:
            known[level] = 2.0
        elif idx:
            raise ValueError(
                f'{source}: neck.scale_layers.{level} ({sorted(idx)}) is not one of '
                "detectron2's scale layers (4.0: deconv, LN, GELU, deconv; 2.0: deconv)"
            )
    if not known:  # only 1.0 / pooling levels: detectron2 lists 1.0 before 0.5
        return [2.0**-i for i in range(n_levels)]
    level, scale = min(known.items())
    return [scale * 2.0 ** (level - i) for i in range(n_levels)]


def mmdet_to_detectron2(
    sd: Mapping[str, torch.Tensor],
    *,
    patch_size: int | None = None,
    scale_factors: Sequence[float] | None = None,
    source: str = 'state dict',
) -> dict[str, torch.Tensor]:
    """Rename a g2sd mmdet ``MaskRCNN`` state dict to detectron2's ViTDet keys.

    The inverse of :func:`detectron2_to_mmdet`. detectron2 names pyramid levels by stage
    (``simfp_{log2 stride}``), so the neck's scale factors and the patch size are needed:
    read from the keys unless given.

    Args:
        sd: Flat mmdet state dict (``backbone.*``, ``neck.*``, ``rpn_head.*``,
            ``roi_head.*``).
        patch_size: ViT patch size; default from ``backbone.patch_embed.proj.weight``
            (16 when there is no backbone).
        scale_factors: The neck's scale factors (e.g. ``(4.0, 2.0, 1.0, 0.5)``); default
            inferred from ``neck.scale_layers``.
        source: Name used in error messages.

    Returns:
        New ``{detectron2 name: tensor}``.

    Raises:
        ValueError: Keys without a detectron2 counterpart (named), or a scale factor
            detectron2's ``SimpleFeaturePyramid`` does not have (4, 2, 1, 0.5).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    neck: dict[int, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in sd.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
            continue
        if key.startswith('backbone.'):
            rest = key[len('backbone.') :]
            if _VIT_KEY.match(rest):
                out['backbone.net.' + rest] = value
            else:
                unknown.append(key)
            continue
        m = _MM_NECK.match(key)
        if m:
            neck.setdefault(int(m[2]), {})[key] = (m[1], value)
            continue
        for pattern, target in _MM_HEADS:
            hm = pattern.match(key)
            if hm:
                out[target(hm)] = value
                break
        else:
            unknown.append(key)
    if neck:
        n_levels = max(neck) + 1
        if scale_factors is None:
            scales = _level_scales(sd, n_levels, source)
        else:
            scales = [float(s) for s in scale_factors]
            if len(scales) != n_levels:
                raise ValueError(
                    f'scale_factors {tuple(scale_factors)} has {len(scales)} levels, '
                    f'the neck of {source} {n_levels}'
                )
        if patch_size is None:
            proj = sd.get('backbone.patch_embed.proj.weight')
            patch_size = int(proj.shape[-1]) if proj is not None else 16
        for level, entries in sorted(neck.items()):
            scale = scales[level]
            if scale not in _D2_SCALE_LAYERS:
                raise ValueError(
                    f'{source}: neck level {level} has scale factor {scale}; detectron2 '
                    f'SimpleFeaturePyramid supports {sorted(_D2_SCALE_LAYERS, reverse=True)}'
                )
            stage = int(round(math.log2(patch_size / scale)))
            n = _D2_SCALE_LAYERS[scale]
            for key, (kind, value) in entries.items():
                rest = key.split('.', 3)[3]
                if kind == 'scale_layers':
                    if not re.fullmatch(rf'\d+\.{_WB}', rest) or int(rest.split('.')[0]) >= n:
                        unknown.append(key)
                        continue
                    out[f'backbone.simfp_{stage}.{rest}'] = value
                    continue
                j = n if kind == 'lateral_convs' else n + 1
                cm = re.fullmatch(rf'(conv|{_NORM_NAME})\.{_WB}', rest)
                if not cm:
                    unknown.append(key)
                    continue
                sub = f'norm.{cm[2]}' if cm[1] == _NORM_NAME else cm[2]
                out[f'backbone.simfp_{stage}.{j}.{sub}'] = value
    if unknown:
        raise _unknown(unknown, 'detectron2', source)
    if len(out) != len(sd):
        raise ValueError(f'{source}: {len(sd)} keys mapped to {len(out)} (colliding levels)')
    return out


def select_detector(
    sd: Mapping[str, torch.Tensor], *, source: str = 'checkpoint'
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The mmdet detector of a flat checkpoint: ours, a distiller's student, or detectron2's.

    ``student.*`` (a :class:`g2sd.DistillModel`: ``student.*``, ``teacher.*``, adapters)
    selects the student, the other parts are reported as dropped; a detectron2 layout is
    converted with :func:`detectron2_to_mmdet`. Shared ``module.`` / ``detector.`` prefixes
    are removed.

    Args:
        sd: Flat state dict (:func:`g2sd.checkpoint.extract_state_dict`).
        source: Name used in messages.

    Returns:
        (mmdet state dict, dropped top-level parts).

    Raises:
        ValueError: A detectron2 file with keys that do not convert.
    """
    sd = strip_prefixes(sd, ('module.',))
    dropped: list[str] = []
    if any(k.startswith('student.') for k in sd):
        dropped = sorted({k.split('.', 1)[0] for k in sd if not k.startswith('student.')})
        sd = {k[len('student.') :]: v for k, v in sd.items() if k.startswith('student.')}
    if is_detectron2_layout(sd):
        logger.info('%s: detectron2 layout, converting to mmdet keys', source)
        sd = detectron2_to_mmdet(sd, source=source)
    return dict(sd), dropped


def resample_rel_pos_tables(
    sd: Mapping[str, torch.Tensor], target: nn.Module | Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Resample ``*rel_pos_h`` / ``*rel_pos_w`` tables to the lengths of ``target``.

    For a window size or input size that differs from the file's (a table of ``2 S - 1``
    rows for side S): the loader's own resampling (linear, as detectron2's
    ``get_rel_pos``; :func:`g2sd.layers.pos_embed.resample_rel_pos`). Strict loading with
    ``resample=True`` does this by itself; this is for converting files offline.

    Args:
        sd: Flat state dict with the target's key names.
        target: Model or its state dict.

    Returns:
        New dict; tables of another length are replaced, everything else kept.
    """
    from g2sd.checkpoint.loading import _resample_rel_pos

    model_sd = target.state_dict() if isinstance(target, nn.Module) else target
    out = dict(sd)
    _resample_rel_pos(out, model_sd, 'state dict')
    return out


def _use_detector(model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str) -> UsePlan:
    """Load use ``'detector'``: a whole mmdet Mask R-CNN, exactly (ours or detectron2's)."""
    if not isinstance(getattr(model, 'rpn_head', None), nn.Module):
        raise TypeError(
            f"use='detector' needs a two-stage mmdet detector with an rpn_head, got "
            f'{type(model).__name__}'
        )
    try:
        det, dropped = select_detector(sd, source=source)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if not any(k.startswith('rpn_head.') for k in det):
        parts = sorted({k.split('.', 1)[0] for k in det})
        raise CheckpointError(
            f'{source}: not a whole detector: the RPN head (rpn_head.*, detectron2 '
            f'proposal_generator.rpn_head.*) is missing; the file has {_listing(parts)}. '
            "A backbone-only file loads with use='backbone' into the backbone"
        )
    return UsePlan(det, (), (), tuple(dropped))


register_use('detector', _use_detector, overwrite=True)
