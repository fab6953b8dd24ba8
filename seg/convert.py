"""mmseg / official G2SD (BEiT) <-> g2sd keys for the ViT UperNet, and the ``'segmentor'`` use.

The segmentation experiments of G2SD (Huang et al., "Generic-to-Specific Distillation of
Masked Autoencoders", CVPR 2023, arXiv 2302.14771) fine-tune and distill UperNet on a
BEiT-style ViT (absolute position embedding, per-block relative position bias, layer scale
init 1.0, no final norm). Three key layouts of that one network exist:

* **ours** (:class:`g2sd.SegViTBackbone`, the one ViT's timm / MAE names) in an mmseg
  ``EncoderDecoder`` with ``Feature2Pyramid`` (``neck.*``), ``UPerHead``
  (``decode_head.*``) and ``FCNHead`` (``auxiliary_head.*``);
* **mmseg 1.x** ``mmseg.models.backbones.MAE`` / ``BEiT`` (the MAE / BEiT configs of
  mmseg 1.2.2), same neck and heads;
* **official G2SD / BEiT** (``G2SD_seg_dis/src/backbone/mae.py``, unilm
  ``beit/semantic_segmentation``): mmseg-0.x segmentors whose backbone holds the pyramid
  (``backbone.fpn1`` .. ``fpn4``), and backbone-only files with bare ``blocks.*`` keys.

Backbone names (``backbone.`` prefix optional: bare backbone-only files convert too):

============================================ ================================ ======================
mmseg 1.x ``MAE`` / ``BEiT``                 ours                             official / BEiT
============================================ ================================ ======================
``cls_token``, ``pos_embed``                 same                             same
``patch_embed.projection.*``                 ``patch_embed.proj.*``           ``patch_embed.proj.*``
``layers.{i}.ln1`` / ``ln2``                 ``blocks.{i}.norm1`` / ``norm2`` as ours
``layers.{i}.attn.qkv.weight`` / ``.bias``   ``blocks.{i}.attn.qkv.*``        as ours
``layers.{i}.attn.q_bias`` / ``v_bias``      ``qkv.bias = [q, 0, v]``         ``attn.q_bias`` / ...
``layers.{i}.attn.proj.*``                   ``blocks.{i}.attn.proj.*``       as ours
``layers.{i}.attn.relative_position_``       ``blocks.{i}.attn.relative_``    as ours
``bias_table``                               ``position_bias_table``
``layers.{i}.attn.relative_position_index``  (none: non-persistent buffer)    ``...index`` (buffer)
``layers.{i}.gamma_1`` / ``gamma_2``         ``blocks.{i}.gamma_1`` / ...     as ours
``layers.{i}.ffn.layers.0.0.*`` / ``1.*``    ``blocks.{i}.mlp.fc1`` / ``fc2`` as ours
``ln1.*`` (``final_norm=True`` only)         ``norm.*``                       ``norm.*``
(none)                                       (none)                           ``rel_pos_bias.*``
                                                                              (shared table)
============================================ ================================ ======================

Pyramid: mmseg and ours share ``neck.upsample_4x.{0,1,3}`` (deconv, BN, deconv) and
``neck.upsample_2x.0`` (deconv); the official backbone's ``fpn1.{0,1,3}`` /
``fpn2.0`` are the same layers (``fpn3`` identity and ``fpn4`` max-pool have no weights),
identified by their structure ({0, 1, 3}: 4x, {0}: 2x). Heads are the same mmseg modules
in all three and pass through untouched.

Semantic equivalences (checked against mmseg 1.2.2 and the official code; the tests check
the numerics of ours against mmseg's ``MAE``):

* q/v biases: BEiT's attention uses ``F.linear(x, qkv.weight, cat(q_bias, 0, v_bias))``,
  so ``qkv.bias = cat(q_bias, zeros, v_bias)`` is exact. The reverse
  (:func:`g2sd_to_mmseg` with ``qv_bias=True``) drops the key part of ``qkv.bias``: a key
  bias ``b_k`` adds ``q . b_k`` to every logit of a query row, the same for every key, which
  the softmax cancels (a non-zero part is logged at INFO).
* ``relative_position_index`` is derived from the grid (BEiT's construction,
  :func:`g2sd.layers.rel_pos.relative_position_index`); a file's index is checked to be
  that one before it is dropped, and :func:`g2sd_to_mmseg` re-creates it for mmseg's
  persistent buffer.
* A shared ``rel_pos_bias.relative_position_bias_table`` (BEiT
  ``use_shared_rel_pos_bias``) is copied into every block, as BEiT's own checkpoint loader
  does for fine-tuning with per-block tables.
* mmseg's ``MAE`` uses ``LN(eps=1e-5)`` unless the config says ``norm_cfg=dict(type='LN',
  eps=1e-6)`` (mmseg's MAE configs do); ours and the official code use 1e-6. The weights
  do not carry the epsilon: set it in the mmseg config.

Unknown keys raise ``ValueError`` naming them: every key is consumed, and
``mmseg_to_g2sd(g2sd_to_mmseg(sd)) == sd``. The load use ``'segmentor'`` converts any of
the three layouts to the layout of the model's backbone (ours or mmseg's ``MAE`` /
``BEiT``) and loads the whole ``EncoderDecoder`` strictly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from g2sd.checkpoint import (
    CheckpointError,
    UsePlan,
    extract_state_dict,
    register_use,
    strip_prefixes,
)
from g2sd.checkpoint._common import _listing
from g2sd.layers.rel_pos import relative_position_index

__all__ = [
    'beit_to_g2sd',
    'g2sd_to_mmseg',
    'is_beit_layout',
    'is_mmseg_vit_layout',
    'mmseg_to_g2sd',
    'select_segmentor',
]

logger = logging.getLogger(__name__)

_WB = r'(weight|bias)'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
#: Top-level parts of an mmseg ``EncoderDecoder`` state dict besides the backbone.
_HEAD_PARTS = ('neck.', 'decode_head.', 'auxiliary_head.')
_BIAS_EXTRA_ROWS = 3  # class-to-token, token-to-class, class-to-class rows of a BEiT table

# mmseg 1.x MAE / BEiT backbone key (prefix removed) -> ours; groups: block, parameter.
_MMSEG_BLOCK: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r'^layers\.(\d+)\.(gamma_[12])$'), 'blocks.{0}.{1}'),
    (re.compile(rf'^layers\.(\d+)\.ln1\.{_WB}$'), 'blocks.{0}.norm1.{1}'),
    (re.compile(rf'^layers\.(\d+)\.ln2\.{_WB}$'), 'blocks.{0}.norm2.{1}'),
    (re.compile(rf'^layers\.(\d+)\.attn\.qkv\.{_WB}$'), 'blocks.{0}.attn.qkv.{1}'),
    (re.compile(rf'^layers\.(\d+)\.attn\.proj\.{_WB}$'), 'blocks.{0}.attn.proj.{1}'),
    (
        re.compile(r'^layers\.(\d+)\.attn\.(relative_position_bias_table)$'),
        'blocks.{0}.attn.{1}',
    ),
    (re.compile(rf'^layers\.(\d+)\.ffn\.layers\.0\.0\.{_WB}$'), 'blocks.{0}.mlp.fc1.{1}'),
    (re.compile(rf'^layers\.(\d+)\.ffn\.layers\.1\.{_WB}$'), 'blocks.{0}.mlp.fc2.{1}'),
)
_MMSEG_QV = re.compile(r'^layers\.(\d+)\.attn\.([qv])_bias$')
_MMSEG_INDEX = re.compile(r'^layers\.(\d+)\.attn\.relative_position_index$')
_MMSEG_TOP: dict[str, str] = {
    'cls_token': 'cls_token',
    'pos_embed': 'pos_embed',
    'patch_embed.projection.weight': 'patch_embed.proj.weight',
    'patch_embed.projection.bias': 'patch_embed.proj.bias',
    'ln1.weight': 'norm.weight',
    'ln1.bias': 'norm.bias',
}

# Our backbone key (prefix removed) -> mmseg; groups: block, parameter.
_OURS_BLOCK: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r'^blocks\.(\d+)\.(gamma_[12])$'), 'layers.{0}.{1}'),
    (re.compile(rf'^blocks\.(\d+)\.norm1\.{_WB}$'), 'layers.{0}.ln1.{1}'),
    (re.compile(rf'^blocks\.(\d+)\.norm2\.{_WB}$'), 'layers.{0}.ln2.{1}'),
    (re.compile(r'^blocks\.(\d+)\.attn\.qkv\.(weight)$'), 'layers.{0}.attn.qkv.{1}'),
    (re.compile(rf'^blocks\.(\d+)\.attn\.proj\.{_WB}$'), 'layers.{0}.attn.proj.{1}'),
    (
        re.compile(r'^blocks\.(\d+)\.attn\.(relative_position_bias_table)$'),
        'layers.{0}.attn.{1}',
    ),
    (re.compile(rf'^blocks\.(\d+)\.mlp\.fc1\.{_WB}$'), 'layers.{0}.ffn.layers.0.0.{1}'),
    (re.compile(rf'^blocks\.(\d+)\.mlp\.fc2\.{_WB}$'), 'layers.{0}.ffn.layers.1.{1}'),
)
_OURS_QKV_BIAS = re.compile(r'^blocks\.(\d+)\.attn\.qkv\.bias$')
_OURS_TOP = {v: k for k, v in _MMSEG_TOP.items()}

# Official G2SD / BEiT backbone key (prefix removed) that is already ours.
_BEIT_SAME = re.compile(
    r'^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|'
    r'blocks\.\d+\.(gamma_[12]|norm[12]\.(weight|bias)|attn\.qkv\.(weight|bias)|'
    r'attn\.proj\.(weight|bias)|attn\.relative_position_bias_table|mlp\.fc[12]\.(weight|bias)))$'
)
_BEIT_QV = re.compile(r'^blocks\.(\d+)\.attn\.([qv])_bias$')
_BEIT_INDEX = re.compile(r'^blocks\.(\d+)\.attn\.relative_position_index$')
_BEIT_SHARED = re.compile(r'^rel_pos_bias\.(relative_position_bias_table|relative_position_index)$')
_BEIT_FPN = re.compile(rf'^fpn(\d)\.(\d+)\.{_BN}$')
# Signs of the BEiT layout that our layout never has (prefix removed).
_BEIT_ONLY = re.compile(
    r'^(blocks\.\d+\.attn\.(q_bias|v_bias|relative_position_index)|rel_pos_bias\..+|'
    r'fpn\d\.\d+\..+)$'
)


def _split_prefix(sd: Mapping[str, Any]) -> tuple[bool, str]:
    """(file is a whole model with ``backbone.*`` keys, prefix of the backbone keys)."""
    prefixed = any(isinstance(k, str) and k.startswith('backbone.') for k in sd)
    return prefixed, 'backbone.' if prefixed else ''


def _backbone_items(
    sd: Mapping[str, Any],
    whole: bool,
    prefix: str,
    out: dict[str, torch.Tensor],
    unknown: list[str],
) -> Iterator[tuple[str, str, Any]]:
    """The backbone entries of ``sd`` as ``(key, key without prefix, value)``.

    The one key walk of the converters: in a whole segmentor the head parts (``neck.*``,
    ``decode_head.*``, ``auxiliary_head.*``) are copied to ``out`` unchanged and keys outside
    ``prefix`` go to ``unknown``, as do non-string keys.
    """
    for key, value in sd.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
        elif whole and key.startswith(_HEAD_PARTS):
            out[key] = value
        elif whole and not key.startswith(prefix):
            unknown.append(key)
        else:
            yield key, key[len(prefix) :], value


def is_mmseg_vit_layout(sd: Mapping[str, Any]) -> bool:
    """Whether a flat state dict has mmseg 1.x ``MAE`` / ``BEiT`` backbone names.

    Args:
        sd: Flat ``{name: tensor}``, a whole segmentor (``backbone.*``) or a bare backbone.

    Returns:
        True when a (``backbone.``-prefixed or bare) key starts with ``layers.{i}.`` or is
        ``patch_embed.projection.weight``.
    """
    for k in sd:
        if not isinstance(k, str):
            continue
        rest = k[len('backbone.') :] if k.startswith('backbone.') else k
        if re.match(r'layers\.\d+\.', rest) or rest == 'patch_embed.projection.weight':
            return True
    return False


def is_beit_layout(sd: Mapping[str, Any]) -> bool:
    """Whether a flat state dict has official G2SD / BEiT names that ours does not have.

    These are ``blocks.{i}.attn.q_bias`` / ``v_bias`` / ``relative_position_index`` (a
    persistent buffer there), a shared ``rel_pos_bias.*`` table, or the pyramid inside the
    backbone (``backbone.fpn{k}.*``), with or without the ``backbone.`` prefix. An official
    file without any of them is already in our layout.

    Args:
        sd: Flat ``{name: tensor}``.

    Returns:
        True for the official / BEiT layout.
    """
    for k in sd:
        if not isinstance(k, str):
            continue
        rest = k[len('backbone.') :] if k.startswith('backbone.') else k
        if _BEIT_ONLY.match(rest):
            return True
    return False


def _unknown(keys: list[str], src_layout: str, source: str) -> ValueError:
    return ValueError(
        f'{source}: {len(keys)} key(s) of the {src_layout} layout have no g2sd counterpart '
        f'(only a BEiT-style ViT backbone with a Feature2Pyramid-style neck and mmseg heads '
        f'converts): {_listing(sorted(keys))}'
    )


def _check_index(key: str, index: torch.Tensor, table: torch.Tensor | None, source: str) -> None:
    """Refuse a ``relative_position_index`` that is not BEiT's for its grid (not derivable)."""
    grid = None
    if index.ndim == 2 and index.shape[0] == index.shape[1]:
        rows = None if table is None else int(table.shape[0])
        grid = _index_grid(int(index.shape[0]) - 1, rows)
    if grid is None:
        raise ValueError(f'{source}: {key} of shape {tuple(index.shape)} is not a BEiT index')
    expected = relative_position_index(grid, class_token=True)
    if not torch.equal(index.to(torch.long), expected):
        raise ValueError(
            f"{source}: {key} is not BEiT's relative position index of a {grid[0]}x{grid[1]} "
            'grid; it cannot be dropped as derived (not a BEiT-style bias)'
        )


def _index_grid(n_patches: int, table_rows: int | None) -> tuple[int, int] | None:
    """The token grid (Wh, Ww) with ``Wh * Ww = n_patches`` that fits the table (square first)."""
    if n_patches <= 0:
        return None
    cands = [(h, n_patches // h) for h in range(1, n_patches + 1) if n_patches % h == 0]
    cands.sort(key=lambda g: abs(g[0] - g[1]))
    for h, w in cands:
        if table_rows is None or (2 * h - 1) * (2 * w - 1) + _BIAS_EXTRA_ROWS == table_rows:
            return (h, w)
    return None


def _table_grid(table_rows: int, n_patches: int | None) -> tuple[int, int] | None:
    """The token grid of a BEiT table of ``table_rows`` rows (and ``n_patches`` tokens if known)."""
    if n_patches is not None:
        return _index_grid(n_patches, table_rows)
    n = table_rows - _BIAS_EXTRA_ROWS
    side = int(round(n**0.5))
    if n <= 0 or side * side != n or side % 2 == 0:
        return None
    return ((side + 1) // 2, (side + 1) // 2)


def _assemble_qv(
    qv: dict[int, dict[str, torch.Tensor]],
    out: dict[str, torch.Tensor],
    prefix: str,
    src_prefix: str,
    src_name: str,
    source: str,
) -> None:
    """``qkv.bias = cat(q_bias, zeros, v_bias)`` for every block with q / v biases."""
    for i, parts in sorted(qv.items()):
        key = f'{prefix}blocks.{i}.attn.qkv.bias'
        if set(parts) != {'q', 'v'}:
            have = ', '.join(f'{src_prefix}{src_name.format(i, p)}' for p in sorted(parts))
            raise ValueError(f'{source}: {have} without its q/v partner')
        if key in out:
            raise ValueError(f'{source}: block {i} has both attn.qkv.bias and attn.q_bias / v_bias')
        q, v = parts['q'], parts['v']
        if q.shape != v.shape or q.ndim != 1:
            raise ValueError(
                f'{source}: block {i} q_bias {tuple(q.shape)} / v_bias {tuple(v.shape)} differ'
            )
        out[key] = torch.cat((q, torch.zeros_like(q), v))


def _check_and_drop_indices(
    indices: dict[int, tuple[str, torch.Tensor]],
    out: dict[str, torch.Tensor],
    prefix: str,
    source: str,
) -> list[str]:
    dropped = []
    for i, (key, index) in sorted(indices.items()):
        table = out.get(f'{prefix}blocks.{i}.attn.relative_position_bias_table')
        _check_index(key, index, table, source)
        dropped.append(key)
    return dropped


def mmseg_to_g2sd(
    sd: Mapping[str, torch.Tensor], *, source: str = 'state dict'
) -> dict[str, torch.Tensor]:
    """Rename an mmseg 1.x ``MAE`` / ``BEiT`` segmentor (or bare backbone) to our keys.

    Pure renaming (tensors are the same objects) except: ``q_bias`` / ``v_bias`` are
    assembled into ``qkv.bias = cat(q, 0, v)``, and ``relative_position_index`` buffers are
    checked (BEiT's index of their grid) and dropped. ``neck.*``, ``decode_head.*`` and
    ``auxiliary_head.*`` pass through (same mmseg modules).

    Args:
        sd: Flat mmseg state dict (``backbone.*`` + heads, or bare backbone keys).
        source: Name used in messages.

    Returns:
        New ``{our name: tensor}`` with the same prefix structure.

    Raises:
        ValueError: Keys without a counterpart (named), an index that is not BEiT's, or an
            unpaired q / v bias.
    """
    whole, prefix = _split_prefix(sd)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qv: dict[int, dict[str, torch.Tensor]] = {}
    indices: dict[int, tuple[str, torch.Tensor]] = {}
    for key, rest, value in _backbone_items(sd, whole, prefix, out, unknown):
        if rest in _MMSEG_TOP:
            out[prefix + _MMSEG_TOP[rest]] = value
            continue
        m = _MMSEG_QV.match(rest)
        if m:
            qv.setdefault(int(m[1]), {})[m[2]] = value
            continue
        m = _MMSEG_INDEX.match(rest)
        if m:
            indices[int(m[1])] = (key, value)
            continue
        for pattern, target in _MMSEG_BLOCK:
            bm = pattern.match(rest)
            if bm:
                out[prefix + target.format(*bm.groups())] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(unknown, 'mmseg ViT', source)
    _assemble_qv(qv, out, prefix, prefix, 'layers.{0}.attn.{1}_bias', source)
    dropped = _check_and_drop_indices(indices, out, prefix, source)
    if dropped:
        logger.debug('%s: dropped %d derived relative_position_index buffers', source, len(dropped))
    return out


def beit_to_g2sd(
    sd: Mapping[str, torch.Tensor], *, source: str = 'state dict'
) -> dict[str, torch.Tensor]:
    """Convert an official G2SD / BEiT segmentor (or bare backbone) to our keys.

    ``backbone.fpn{k}`` become ``neck.upsample_4x`` ({0, 1, 3}: deconv, BN, deconv) or
    ``neck.upsample_2x`` ({0}: deconv); ``q_bias`` / ``v_bias`` become ``qkv.bias = cat(q, 0,
    v)``; ``relative_position_index`` buffers are checked and dropped; a shared
    ``rel_pos_bias.relative_position_bias_table`` is copied into every block (BEiT's own
    loader does the same). ``neck.*`` (a file that is ours apart from BEiT names),
    ``decode_head.*`` and ``auxiliary_head.*`` pass through.

    Args:
        sd: Flat official state dict (``backbone.*`` + heads, or bare ``blocks.*`` keys).
        source: Name used in messages.

    Returns:
        New ``{our name: tensor}`` (same prefix structure; the pyramid goes to ``neck.*``).

    Raises:
        ValueError: Keys without a counterpart (named), two pyramid levels of the same
            kind, an index that is not BEiT's, or per-block and shared tables together.
    """
    whole, prefix = _split_prefix(sd)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qv: dict[int, dict[str, torch.Tensor]] = {}
    indices: dict[int, tuple[str, torch.Tensor]] = {}
    fpn: dict[int, dict[str, torch.Tensor]] = {}
    shared: dict[str, torch.Tensor] = {}
    for key, rest, value in _backbone_items(sd, whole, prefix, out, unknown):
        if _BEIT_SAME.match(rest):
            out[prefix + rest] = value
            continue
        m = _BEIT_QV.match(rest)
        if m:
            qv.setdefault(int(m[1]), {})[m[2]] = value
            continue
        m = _BEIT_INDEX.match(rest)
        if m:
            indices[int(m[1])] = (key, value)
            continue
        m = _BEIT_SHARED.match(rest)
        if m:
            shared[m[1]] = value
            continue
        m = _BEIT_FPN.match(rest) if whole else None
        if m:
            fpn.setdefault(int(m[1]), {})[f'{m[2]}.{m[3]}'] = value
            continue
        unknown.append(key)
    if unknown:
        raise _unknown(unknown, 'official G2SD / BEiT', source)
    _assemble_qv(qv, out, prefix, prefix, 'blocks.{0}.attn.{1}_bias', source)
    if 'relative_position_bias_table' in shared:
        _expand_shared_table(shared, out, prefix, source)
    _check_and_drop_indices(indices, out, prefix, source)
    used: dict[str, int] = {}
    for level, entries in sorted(fpn.items()):
        idx = {int(k.split('.')[0]) for k in entries if k.endswith('.weight')}
        if idx == {0, 1, 3}:
            name = 'upsample_4x'
        elif idx == {0}:
            name = 'upsample_2x'
        else:
            raise ValueError(
                f'{source}: backbone.fpn{level} (layers {sorted(idx)}) is neither the 4x '
                '(deconv, BN, GELU, deconv) nor the 2x (deconv) pyramid level'
            )
        if name in used:
            raise ValueError(
                f'{source}: backbone.fpn{used[name]} and backbone.fpn{level} are both {name}'
            )
        used[name] = level
        for k, value in entries.items():
            if f'neck.{name}.{k}' in out:
                raise ValueError(f'{source}: backbone.fpn{level}.{k} and neck.{name}.{k} both')
            out[f'neck.{name}.{k}'] = value
    return out


def _expand_shared_table(
    shared: dict[str, torch.Tensor], out: dict[str, torch.Tensor], prefix: str, source: str
) -> None:
    """Copy a shared BEiT table into every block (BEiT ``use_shared_rel_pos_bias`` files)."""
    table = shared['relative_position_bias_table']
    index = shared.get('relative_position_index')
    if index is not None:
        _check_index(f'{prefix}rel_pos_bias.relative_position_index', index, table, source)
    blocks = sorted({int(k.split('.')[1]) for k in out if k.startswith(prefix + 'blocks.')})
    for i in blocks:
        key = f'{prefix}blocks.{i}.attn.relative_position_bias_table'
        if key in out:
            raise ValueError(
                f'{source}: both a shared rel_pos_bias table and a per-block table ({key})'
            )
        out[key] = table.clone()
    logger.info('%s: shared relative position bias copied into %d blocks', source, len(blocks))


def g2sd_to_mmseg(
    sd: Mapping[str, torch.Tensor],
    *,
    qv_bias: bool = False,
    with_index: bool = True,
    source: str = 'state dict',
) -> dict[str, torch.Tensor]:
    """Rename our segmentor (or bare backbone) to mmseg 1.x ``MAE`` (or ``BEiT``) keys.

    The inverse of :func:`mmseg_to_g2sd`. ``relative_position_index`` (a persistent buffer
    in mmseg) is re-created from the grid (``pos_embed`` token count and table size), so
    mmseg's ``MAE`` loads the file strictly.

    Args:
        sd: Flat state dict in our layout (``backbone.*`` + heads, or bare backbone keys).
        qv_bias: Write BEiT's ``q_bias`` / ``v_bias`` (mmseg ``BEiT(qv_bias=True)``) instead
            of ``qkv.bias`` (mmseg ``MAE``); the key part is dropped (a softmax no-op).
        with_index: Add the ``relative_position_index`` buffers.
        source: Name used in messages.

    Returns:
        New ``{mmseg name: tensor}``.

    Raises:
        ValueError: Keys without an mmseg counterpart (named), or a bias table whose grid
            cannot be told.
    """
    whole, prefix = _split_prefix(sd)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, rest, value in _backbone_items(sd, whole, prefix, out, unknown):
        if rest in _OURS_TOP:
            out[prefix + _OURS_TOP[rest]] = value
            continue
        m = _OURS_QKV_BIAS.match(rest)
        if m:
            i = m[1]
            if not qv_bias:
                out[f'{prefix}layers.{i}.attn.qkv.bias'] = value
                continue
            q, k, v = value.chunk(3)
            k_max = float(k.detach().abs().max()) if k.numel() else 0.0
            if k_max > 0:
                logger.info(
                    '%s: %s: key bias (max |b_k| %.3g) dropped for q_bias / v_bias (it adds '
                    'q.b_k to every logit of a query: cancelled by the softmax)',
                    source,
                    key,
                    k_max,
                )
            out[f'{prefix}layers.{i}.attn.q_bias'] = q
            out[f'{prefix}layers.{i}.attn.v_bias'] = v
            continue
        for pattern, target in _OURS_BLOCK:
            bm = pattern.match(rest)
            if bm:
                out[prefix + target.format(*bm.groups())] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f'{source}: {len(unknown)} key(s) have no mmseg MAE / BEiT counterpart: '
            f'{_listing(sorted(unknown))}'
        )
    if with_index:
        pos = sd.get(prefix + 'pos_embed')
        n_patches = int(pos.shape[1]) - 1 if pos is not None and pos.ndim == 3 else None
        for key in [k for k in out if k.endswith('.attn.relative_position_bias_table')]:
            grid = _table_grid(int(out[key].shape[0]), n_patches)
            if grid is None:
                raise ValueError(
                    f'{source}: cannot tell the token grid of {key} ({out[key].shape[0]} rows'
                    + (f', {n_patches} patches' if n_patches is not None else '')
                    + ') to write its relative_position_index'
                )
            index_key = key[: -len('relative_position_bias_table')] + 'relative_position_index'
            out[index_key] = relative_position_index(grid, class_token=True)
    return out


def select_segmentor(
    sd: Mapping[str, Any], *, source: str = 'checkpoint', whole: bool = True, convert: bool = True
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The mmseg segmentor of a checkpoint, in our layout: ours, mmseg 1.x's or the official one.

    ``state_dict`` / ``model`` wrappers and ``module.`` prefixes are removed
    (:func:`g2sd.checkpoint.extract_state_dict`); ``student.*`` (a :class:`g2sd.DistillModel`)
    selects the student, the other parts are reported as dropped; an mmseg ``MAE`` / ``BEiT``
    layout is converted with :func:`mmseg_to_g2sd`, an official G2SD / BEiT layout with
    :func:`beit_to_g2sd`.

    Args:
        sd: Loaded checkpoint or flat state dict.
        source: Name used in messages.
        whole: Require a whole segmentor (``backbone.*`` and ``decode_head.*``); False also
            accepts a backbone-only file (bare or ``backbone.``-prefixed keys).
        convert: Convert mmseg / official layouts to ours; False keeps the file's names
            (for a model whose backbone is neither ours nor mmseg's ``MAE`` / ``BEiT``).

    Returns:
        (state dict in our layout, dropped top-level parts).

    Raises:
        CheckpointError: No state dict, keys that do not convert, or (``whole``) not a
            segmentor: the message names the top-level parts found.
    """
    flat = strip_prefixes(extract_state_dict(sd, source=source), ('module.',))
    dropped: list[str] = []
    if any(k.startswith('student.') for k in flat):
        dropped = sorted({k.split('.', 1)[0] for k in flat if not k.startswith('student.')})
        flat = {k[len('student.') :]: v for k, v in flat.items() if k.startswith('student.')}
    try:
        if convert and is_mmseg_vit_layout(flat):
            logger.info('%s: mmseg ViT (MAE / BEiT) layout, converting to g2sd keys', source)
            flat = mmseg_to_g2sd(flat, source=source)
        elif convert and is_beit_layout(flat):
            logger.info('%s: official G2SD / BEiT layout, converting to g2sd keys', source)
            flat = beit_to_g2sd(flat, source=source)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if whole and not (
        any(k.startswith('backbone.') for k in flat)
        and any(k.startswith('decode_head.') for k in flat)
    ):
        parts = sorted({k.split('.', 1)[0] for k in flat})
        raise CheckpointError(
            f'{source}: not a whole segmentor (an mmseg EncoderDecoder with backbone.* and '
            f'decode_head.*); the file has {_listing(parts)}. A backbone-only file loads '
            "with use='backbone' into the backbone"
        )
    return dict(flat), dropped


def _backbone_layout(model: nn.Module) -> str:
    """``'g2sd'`` (our ViT), ``'mmseg'`` (mmseg ``MAE`` / ``BEiT``) or ``'other'``."""
    from g2sd.models.vit import VisionTransformer

    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, VisionTransformer):
        return 'g2sd'
    try:
        from mmseg.models.backbones import BEiT
    except ImportError:  # pragma: no cover - mmseg is a dependency of g2sd.seg
        return 'other'
    return 'mmseg' if isinstance(backbone, BEiT) else 'other'


def _use_segmentor(model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str) -> UsePlan:
    """Load use ``'segmentor'``: a whole mmseg EncoderDecoder, exactly (any of the 3 layouts)."""
    if not isinstance(getattr(model, 'decode_head', None), nn.Module):
        raise TypeError(
            "use='segmentor' needs an mmseg EncoderDecoder-like model with a decode_head, got "
            f'{type(model).__name__}'
        )
    layout = _backbone_layout(model)
    seg, dropped = select_segmentor(sd, source=source, convert=layout != 'other')
    model_sd = model.state_dict()
    if not isinstance(getattr(model, 'auxiliary_head', None), nn.Module):
        aux = [k for k in seg if k.startswith('auxiliary_head.')]
        if aux:
            seg = {k: v for k, v in seg.items() if not k.startswith('auxiliary_head.')}
            dropped.append('auxiliary_head')
            logger.info('%s: the model has no auxiliary head: %d keys ignored', source, len(aux))
    if layout == 'mmseg':
        qv = any(k.endswith('.attn.q_bias') for k in model_sd)
        try:
            seg = g2sd_to_mmseg(seg, qv_bias=qv, with_index=False, source=source)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        # The index is derived from the model's grid: take the model's own buffers.
        for k, v in model_sd.items():
            if k.endswith('.attn.relative_position_index') and k not in seg:
                seg[k] = v.clone()
    return UsePlan(seg, (), (), tuple(sorted(set(dropped))))


register_use('segmentor', _use_segmentor, overwrite=True)
