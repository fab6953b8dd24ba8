"""Checkpoint formats: unwrapping, prefix stripping, format detection and converters.

See :mod:`g2sd.checkpoint` for the table of formats.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from g2sd.checkpoint._common import CheckpointError, _listing, _match

__all__ = [
    'FORMATS',
    'detect_format',
    'extract_state_dict',
    'official_gd_to_distiller',
    'to_encoder_state_dict',
]

logger = logging.getLogger(__name__)

FORMATS = ('mae_full', 'mae_encoder', 'g2sd_official_gd', 'g2sd_distiller', 'timm')
# Keys of nested checkpoints that hold the state dict, in priority order
# (mmengine: {'meta', 'state_dict', ...}; MAE / G2SD: {'model', 'args', ...}).
_NEST_KEYS = ('state_dict', 'model', 'module')
# Wrapper prefixes removed when every key carries them: DDP, torch.compile, and the
# ``algorithm`` attribute under which our mmengine pre-training model holds its distiller.
_WRAPPER_PREFIXES = ('module.', '_orig_mod.', 'algorithm.')
_STUDENT_PREFIX = 'student.'
_SENTINEL = 'patch_embed.proj.weight'
# Keys that never belong to the plain encoder (MAE decoder, official G2SD projectors).
_NON_ENCODER = (
    'mask_token',
    'decoder_*',
    'decoderfeature_pred.*',
    'encoderfeature_pred.*',
)
_HEAD = ('head.*',)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any, *, source: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and remove wrapper prefixes.

    Descends into ``state_dict`` (mmengine, with ``meta``), ``model`` (MAE / G2SD /
    DeiT) and ``module`` nesting until a ``{str: Tensor}`` mapping is found, then strips
    ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and ``algorithm.`` (our mmengine
    pre-training model) when *every* key carries the prefix. Idempotent on a plain state
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
    sd = dict(cur)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def detect_format(sd: Mapping[str, torch.Tensor], *, source: str = 'checkpoint') -> str:
    """Name the layout of a (flat, unwrapped) state dict from its key patterns.

    See the module docstring for the table of patterns.

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
        raise CheckpointError(
            f'{source}: not a ViT checkpoint g2sd knows (no {_SENTINEL!r} and no '
            f"'student.*' keys); first keys: {_listing(keys)}"
        )
    if any(k.startswith(('decoderfeature_pred.', 'encoderfeature_pred.')) for k in keys):
        return 'g2sd_official_gd'
    if 'mask_token' in sd or any(k.startswith('decoder_') for k in keys):
        return 'mae_full'
    if 'head.weight' in sd and not any(k.startswith('fc_norm.') for k in keys):
        return 'timm'
    return 'mae_encoder'


def _student_part(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    student = {k[len(_STUDENT_PREFIX) :]: v for k, v in sd.items() if k.startswith(_STUDENT_PREFIX)}
    others = sorted({k.split('.', 1)[0] for k in sd if not k.startswith(_STUDENT_PREFIX)})
    if others:
        logger.debug('%s: dropping distiller parts %s', source, ', '.join(others))
    return student


def to_encoder_state_dict(
    sd: Mapping[str, Any], *, keep_head: bool = False, source: str = 'checkpoint'
) -> dict[str, torch.Tensor]:
    """Convert any known format to the plain encoder (timm / MAE encoder keys).

    Keeps ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.*``, ``norm.*`` /
    ``fc_norm.*`` (and ``head.*`` when ``keep_head``). Takes the ``student.`` part of a
    distiller and drops ``mask_token``, ``decoder_*`` (including ``decoder_pos_embed``),
    ``decoderfeature_pred.*``, ``encoderfeature_pred.*`` and any distiller module other
    than the student (projectors). Other keys are kept, so a strict load reports them.

    Args:
        sd: State dict or a loaded checkpoint (unwrapped with :func:`extract_state_dict`).
        keep_head: Keep ``head.*``.
        source: Name used in error messages.

    Returns:
        New state dict of the encoder.
    """
    sd = extract_state_dict(sd, source=source)
    fmt = detect_format(sd, source=source)
    if fmt == 'g2sd_distiller':
        sd = _student_part(sd, source)
        if _SENTINEL not in sd:
            raise CheckpointError(f'{source}: the student of this distiller has no {_SENTINEL!r}')
    drop = _NON_ENCODER if keep_head else _NON_ENCODER + _HEAD
    return {k: v for k, v in sd.items() if not _match(k, drop)}


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
