"""Checkpoint formats: unwrapping, prefix stripping, format detection and converters.

See :mod:`g2sd.checkpoint` for the table of formats.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from g2sd.checkpoint._common import CheckpointError, _listing, _match

__all__ = [
    'FORMATS',
    'detect_format',
    'extract_state_dict',
    'official_gd_to_distiller',
    'select_encoder',
    'strip_prefixes',
    'to_encoder_state_dict',
]

logger = logging.getLogger(__name__)

FORMATS = (
    'mae_full',
    'mae_encoder',
    'g2sd_official_gd',
    'g2sd_distiller',
    'timm',
    'mm_backbone',
    'mae_lite',
    'deit_distilled',
)
# Keys of nested checkpoints that hold the state dict, in priority order
# (mmengine: {'meta', 'state_dict', ...}; MAE / G2SD: {'model', 'args', ...}).
_NEST_KEYS = ('state_dict', 'model', 'module')
# Wrapper prefixes removed when every key carries them: DDP, torch.compile, and the
# ``algorithm`` attribute under which our mmengine pre-training model holds its distiller.
WRAPPER_PREFIXES = ('module.', '_orig_mod.', 'algorithm.')
_STUDENT_PREFIX = 'student.'
_SENTINEL = 'patch_embed.proj.weight'
# Formats that hold the encoder under a prefix, next to other parts: format -> prefix.
# g2sd distillers (``student.*`` + projectors / adapters), mmdet / mmseg / our classifier
# files (``backbone.*`` + ``neck.*`` / ``decode_head.*`` / ...), MAE-Lite (``model.*`` +
# ``tch_model.*`` / ``attn_adapter.*`` / ``hidden_adapter.*`` / ``ema_model.*``).
_PART_PREFIX = {'g2sd_distiller': 'student.', 'mm_backbone': 'backbone.', 'mae_lite': 'model.'}
# Keys that never belong to the plain encoder (MAE decoder, official G2SD projectors).
_NON_ENCODER = (
    'mask_token',
    'decoder_*',
    'decoderfeature_pred.*',
    'encoderfeature_pred.*',
)
_HEAD = ('head.*',)
# DeiT-style distillation keys (timm ``deit_*_distilled``, TinyMIM*-T, MAE-Lite distilled
# fine-tuning): the token, its head and (MAE-Lite, global pool) its norm.
_DIST_EXTRA = ('dist_token', 'head_dist.*', 'dist_norm.*')


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def strip_prefixes(
    sd: Mapping[str, Any], prefixes: Iterable[str], *, model_keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """Remove prefixes that every key of ``sd`` carries: the one prefix helper of g2sd.

    A prefix is removed when *every* key starts with it and, if ``model_keys`` is given, no
    model key does (so a model whose own keys start with ``backbone.`` keeps them). This
    repeats until nothing changes (``module.student.x`` -> ``x``).

    Args:
        sd: Flat state dict.
        prefixes: Prefixes to try, e.g. ``('module.', '_orig_mod.')``.
        model_keys: Keys of the target model, or None.

    Returns:
        A new dict (the same mapping content when nothing was stripped).
    """
    prefixes = tuple(prefixes)
    keys = None if model_keys is None else list(model_keys)
    out = dict(sd)
    changed = True
    while changed and out:
        changed = False
        for p in prefixes:
            if not all(k.startswith(p) for k in out):
                continue
            if keys is not None and any(k.startswith(p) for k in keys):
                continue
            out = {k[len(p) :]: v for k, v in out.items()}
            changed = True
    return out


def extract_state_dict(obj: Any, *, source: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and remove wrapper prefixes.

    Descends into ``state_dict`` (mmengine, with ``meta``), ``model`` (MAE / G2SD /
    DeiT / MAE-Lite) and ``module`` nesting until a ``{str: Tensor}`` mapping is found,
    then strips ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and ``algorithm.`` (our
    mmengine pre-training model) with :func:`strip_prefixes`. Idempotent on a plain state
    dict.

    Args:
        obj: What :func:`load_file` returned, or a state dict.
        source: Name used in error messages (the file path).

    Returns:
        A new ``{name: tensor}`` dict.

    Raises:
        CheckpointError: Nothing tensor-like was found.
    """
    cur = obj
    for _ in range(len(_NEST_KEYS) + 1):
        if _is_state_dict(cur) or not isinstance(cur, Mapping):
            break
        nxt = next((cur[k] for k in _NEST_KEYS if isinstance(cur.get(k), Mapping)), None)
        if nxt is None:
            break
        cur = nxt
    if not _is_state_dict(cur):
        if isinstance(cur, Mapping):
            keys = [str(k) for k in cur]
            raise CheckpointError(
                f'{source}: no state dict found (expected a mapping of tensors, possibly under '
                f"'state_dict' / 'model' / 'module'); top-level keys: {_listing(keys)}"
            )
        raise CheckpointError(
            f'{source}: no state dict found; the file holds a {type(cur).__name__}, '
            'not a mapping of tensors'
        )
    return strip_prefixes(cur, WRAPPER_PREFIXES)


def _is_deit_distilled(sd: Mapping[str, torch.Tensor]) -> bool:
    """``dist_token`` with its position inside ``pos_embed`` (1, 2 + N, C), N a square."""
    pe = sd.get('pos_embed')
    if 'dist_token' not in sd or 'dist_pos_embed' in sd or pe is None or pe.ndim != 3:
        return False
    n = pe.shape[1] - 2
    return n > 0 and math.isqrt(n) ** 2 == n and math.isqrt(n + 1) ** 2 != n + 1


def detect_format(sd: Mapping[str, torch.Tensor], *, source: str = 'checkpoint') -> str:
    """Name the layout of a (flat, unwrapped) state dict from its key patterns.

    See the module docstring of :mod:`g2sd.checkpoint` for the table of patterns.

    Args:
        sd: State dict, e.g. from :func:`extract_state_dict`.
        source: Name used in error messages.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        CheckpointError: No ViT encoder (``patch_embed.proj.weight``) in the keys.
    """
    keys = list(sd)
    if any(k.startswith(_STUDENT_PREFIX) for k in keys):
        return 'g2sd_distiller'
    if _SENTINEL not in sd:
        for fmt in ('mm_backbone', 'mae_lite'):
            if _PART_PREFIX[fmt] + _SENTINEL in sd:
                return fmt
        raise CheckpointError(
            f'{source}: not a ViT checkpoint g2sd knows (no {_SENTINEL!r}, '
            f"'backbone.{_SENTINEL}', 'model.{_SENTINEL}' or 'student.*' keys); "
            f'first keys: {_listing(keys)}'
        )
    if any(k.startswith(('decoderfeature_pred.', 'encoderfeature_pred.')) for k in keys):
        return 'g2sd_official_gd'
    if 'mask_token' in sd or any(k.startswith('decoder_') for k in keys):
        return 'mae_full'
    if _is_deit_distilled(sd):
        return 'deit_distilled'
    if 'head.weight' in sd and not any(k.startswith('fc_norm.') for k in keys):
        return 'timm'
    return 'mae_encoder'


def select_part(
    sd: Mapping[str, torch.Tensor], prefix: str, *, source: str = 'checkpoint'
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``prefix`` part of ``sd`` (prefix removed) and the other top-level parts dropped.

    Args:
        sd: Flat state dict.
        prefix: E.g. ``'student.'``, ``'backbone.'``, ``'model.'``.
        source: Name used in the log line.

    Returns:
        (part, sorted names of the dropped top-level parts, e.g. ``['neck', 'rpn_head']``).
    """
    part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    dropped = sorted({k.split('.', 1)[0] for k in sd if not k.startswith(prefix)})
    if dropped:
        logger.debug('%s: taking %s*, dropping %s', source, prefix, ', '.join(dropped))
    return part, dropped


def select_encoder(
    sd: Mapping[str, torch.Tensor], *, source: str = 'checkpoint'
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Descend to the ViT of a checkpoint: the student / backbone / MAE-Lite ``model`` part.

    Repeats while the format holds the ViT under a prefix (a distiller whose student is a
    classifier: ``student.backbone.*``).

    Args:
        sd: Flat state dict (see :func:`extract_state_dict`).
        source: Name used in messages.

    Returns:
        (state dict of the ViT part, its format, dropped top-level parts with their
        prefixes, e.g. ``['neck', 'decode_head']`` or ``['tch_model', 'attn_adapter']``).

    Raises:
        CheckpointError: Not a ViT checkpoint, or the selected part has no ViT.
    """
    part = dict(sd)
    dropped: list[str] = []
    fmt = detect_format(part, source=source)
    path = ''
    while fmt in _PART_PREFIX:
        prefix = _PART_PREFIX[fmt]
        part, others = select_part(part, prefix, source=source)
        dropped += [path + o for o in others]
        path += prefix
        if _SENTINEL not in part and not any(
            k.startswith(tuple(_PART_PREFIX.values())) for k in part
        ):
            raise CheckpointError(
                f'{source}: the {path}* part of this {fmt} checkpoint has no ViT '
                f'({_SENTINEL!r}); first keys: {_listing(list(part))}'
            )
        fmt = detect_format(part, source=source)
    return part, fmt, dropped


def _student_part(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    return select_part(sd, _STUDENT_PREFIX, source=source)[0]


def drop_distillation_token(
    sd: Mapping[str, torch.Tensor], *, keep_dist_pos: bool = False
) -> dict[str, torch.Tensor]:
    """Convert a ``deit_distilled`` state dict to the plain ViT layout.

    ``pos_embed`` (1, 2 + N, C) loses the distillation slot at index 1; ``dist_token``,
    ``head_dist.*`` and ``dist_norm.*`` are removed. With ``keep_dist_pos`` the token is
    kept and its slot becomes ``dist_pos_embed`` (1, 1, C), the layout of
    :class:`g2sd.cls.vit.DistilledVisionTransformer` with ``dist_token_position='deit'``.

    Args:
        sd: State dict of format ``deit_distilled``.
        keep_dist_pos: Keep the token, head and its position as ``dist_pos_embed``.

    Returns:
        New state dict.
    """
    pe = sd['pos_embed']
    out = {k: v for k, v in sd.items() if keep_dist_pos or not _match(k, _DIST_EXTRA)}
    out['pos_embed'] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
    if keep_dist_pos:
        out['dist_pos_embed'] = pe[:, 1:2].clone()
    return out


def to_encoder_state_dict(
    sd: Mapping[str, Any], *, keep_head: bool = False, source: str = 'checkpoint'
) -> dict[str, torch.Tensor]:
    """Convert any known format to the plain encoder (timm / MAE encoder keys).

    Keeps ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.*``, ``norm.*`` /
    ``fc_norm.*`` (and ``head.*`` when ``keep_head``). Takes the ``student.`` part of a
    distiller, the ``backbone.`` part of an mmdet / mmseg / classifier file and the
    ``model.`` part of a MAE-Lite file (:func:`select_encoder`); drops ``mask_token``,
    ``decoder_*`` (including ``decoder_pos_embed``), ``decoderfeature_pred.*``,
    ``encoderfeature_pred.*`` and, for ``deit_distilled``, the distillation token (see
    :func:`drop_distillation_token`). Other keys are kept, so a strict load reports them.

    Args:
        sd: State dict or a loaded checkpoint (unwrapped with :func:`extract_state_dict`).
        keep_head: Keep ``head.*``.
        source: Name used in error messages.

    Returns:
        New state dict of the encoder.
    """
    enc, fmt, _ = select_encoder(extract_state_dict(sd, source=source), source=source)
    if fmt == 'deit_distilled':
        enc = drop_distillation_token(enc)
    drop = _NON_ENCODER if keep_head else _NON_ENCODER + _HEAD
    return {k: v for k, v in enc.items() if not _match(k, drop)}


def official_gd_to_distiller(
    sd: Mapping[str, Any], *, source: str = 'checkpoint'
) -> dict[str, torch.Tensor]:
    """Map an official G2SD generic-distillation student to our distiller layout.

    The official student (``models_mae.py``, ``teacher=False``) holds the MAE keys plus
    ``decoderfeature_pred`` (the trained projector) and ``encoderfeature_pred`` (loss
    weight 0). Ours has ``student`` (MaskedAutoencoderViT, ``pixel_head=False``) and
    ``projector`` (:class:`g2sd.models.vit.Mlp`). Mapping: MAE keys -> ``student.*``
    except ``decoder_norm.*`` / ``decoder_pred.*`` (never trained) and
    ``encoderfeature_pred.*`` (dropped); ``decoderfeature_pred.fc{1,2}.*`` ->
    ``projector.fc{1,2}.*``.

    Args:
        sd: Official GD state dict or checkpoint (``{'model': ...}``).
        source: Name used in error messages.

    Returns:
        State dict for our G2SD distiller.

    Raises:
        CheckpointError: The input is not an official GD checkpoint.
    """
    sd = extract_state_dict(sd, source=source)
    fmt = detect_format(sd, source=source)
    if fmt != 'g2sd_official_gd':
        raise CheckpointError(
            f"{source}: expected an official G2SD GD checkpoint (with 'decoderfeature_pred.*'), "
            f'got format {fmt!r}'
        )
    if not any(k.startswith('decoderfeature_pred.') for k in sd):
        raise CheckpointError(
            f"{source}: official G2SD checkpoint without 'decoderfeature_pred.*' (the projector)"
        )
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        if k.startswith('decoderfeature_pred.'):
            out['projector.' + k[len('decoderfeature_pred.') :]] = v
        elif _match(k, ('decoder_norm.*', 'decoder_pred.*', 'encoderfeature_pred.*')):
            dropped.append(k)
        else:
            out[_STUDENT_PREFIX + k] = v
    logger.info(
        '%s: official G2SD GD -> distiller (%d tensors; dropped %d unused: %s)',
        source,
        len(out),
        len(dropped),
        _listing(dropped, 4),
    )
    return out
