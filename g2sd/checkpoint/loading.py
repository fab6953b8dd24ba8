"""Strict loading: allow-lists per use, position-embedding resampling, load summaries."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from g2sd.checkpoint._common import CheckpointError, _listing, _match
from g2sd.checkpoint.formats import (
    _student_part,
    detect_format,
    extract_state_dict,
    official_gd_to_distiller,
    to_encoder_state_dict,
)
from g2sd.checkpoint.reading import load_file
from g2sd.layers.pos_embed import resample_pos_embed

__all__ = [
    'USES',
    'LoadReport',
    'load_pretrained',
    'load_state_dict_strict',
    'prepare_backbone_state_dict',
]

logger = logging.getLogger(__name__)

USES = ('mae_teacher', 'encoder_teacher', 'backbone', 'mae', 'distiller')

Use = Literal['mae_teacher', 'encoder_teacher', 'backbone', 'mae', 'distiller']

_ENCODER_ONLY_HINT = (
    "this looks like MAE's encoder-only release (mae_pretrain_vit_base.pth); generic "
    'distillation needs the decoder: use mae_pretrain_vit_base_full.pth or a checkpoint '
    "from g2sd's MAE config"
)



@dataclass
class LoadReport:
    """What a strict load did.

    Attributes:
        loaded: Model keys filled from the checkpoint.
        missing_allowed: Model keys left at their initial value (allow-listed as missing,
            including allow-listed keys whose checkpoint shape did not fit).
        unexpected_ignored: Checkpoint keys ignored (allow-listed as unexpected).
        resampled: Position-embedding keys resampled to the model's grid.
    """

    loaded: list[str] = field(default_factory=list)
    missing_allowed: list[str] = field(default_factory=list)
    unexpected_ignored: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)

    def summary(self, what: str = 'model', source: str = 'state dict') -> str:
        """One-screen text summary (counts plus the first names)."""
        lines = [f'loaded {len(self.loaded)} tensors into {what} from {source}']
        for label, keys in (
            ('missing (allowed, kept at init)', self.missing_allowed),
            ('unexpected (ignored)', self.unexpected_ignored),
            ('resampled', self.resampled),
        ):
            if keys:
                lines.append(f'  {label}: {len(keys)}: {_listing(keys)}')
        return '\n'.join(lines)


def _owner(model: nn.Module, key: str) -> nn.Module | None:
    prefix = key.rsplit('.', 1)[0] if '.' in key else ''
    try:
        return model.get_submodule(prefix)
    except AttributeError:
        return None


def _resample_pos_embeds(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    model_sd: Mapping[str, torch.Tensor],
    source: str,
) -> list[str]:
    """Resample ``*pos_embed`` / ``*decoder_pos_embed`` entries of ``sd`` in place."""
    done: list[str] = []
    for key, value in list(sd.items()):
        if not key.endswith('pos_embed') or key not in model_sd:
            continue
        target = model_sd[key]
        if value.shape == target.shape or value.ndim != 3 or target.ndim != 3:
            continue
        if value.shape[0] != 1 or value.shape[2] != target.shape[2]:
            continue  # reported as a shape mismatch
        owner = _owner(model, key)
        is_decoder = key.rsplit('.', 1)[-1] == 'decoder_pos_embed'
        prefix = 1 if is_decoder else int(getattr(owner, 'num_prefix_tokens', 1))
        patch_embed = getattr(owner, 'patch_embed', None)
        new_grid = getattr(patch_embed, 'grid_size', None)
        if new_grid is None:
            side = math.isqrt(target.shape[1] - prefix)
            new_grid = (side, side)
        n_old = value.shape[1] - prefix
        side = math.isqrt(max(n_old, 0))
        if side * side != n_old or new_grid[0] * new_grid[1] != target.shape[1] - prefix:
            continue  # not a square grid: reported as a shape mismatch
        sd[key] = resample_pos_embed(value, tuple(new_grid), prefix, (side, side))
        done.append(key)
        logger.info(
            '%s: resampled %s from a %dx%d to a %dx%d grid',
            source,
            key,
            side,
            side,
            new_grid[0],
            new_grid[1],
        )
    return done


def _prepare(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    allow_missing: Sequence[str],
    allow_unexpected: Sequence[str],
    what: str,
    resample: bool,
    source: str,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Verify ``sd`` against ``model``; return the loadable subset and the report."""
    model_sd = model.state_dict()
    sd = dict(sd)
    report = LoadReport()
    if resample:
        report.resampled = _resample_pos_embeds(model, sd, model_sd, source)
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = [
        (k, tuple(sd[k].shape), tuple(model_sd[k].shape))
        for k in model_sd
        if k in sd and sd[k].shape != model_sd[k].shape
    ]
    bad_missing = [k for k in missing if not _match(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _match(k, allow_unexpected)]
    bad_shapes = [m for m in mismatched if not _match(m[0], allow_missing)]
    if bad_missing or bad_unexpected or bad_shapes:
        parts = [f'{source} does not fit {what}:']
        if bad_missing:
            parts.append(f'  missing keys ({len(bad_missing)}): {_listing(bad_missing)}')
        if bad_unexpected:
            parts.append(f'  unexpected keys ({len(bad_unexpected)}): {_listing(bad_unexpected)}')
        if bad_shapes:
            shown = [f'{k}: checkpoint {c} vs model {m}' for k, c, m in bad_shapes]
            parts.append(f'  shape mismatches ({len(bad_shapes)}): {_listing(shown)}')
        raise CheckpointError('\n'.join(parts))
    bad_keys = {m[0] for m in mismatched}
    ready = {k: v for k, v in sd.items() if k in model_sd and k not in bad_keys}
    report.loaded = list(ready)
    report.missing_allowed = missing + [m[0] for m in mismatched]
    report.unexpected_ignored = unexpected
    return ready, report


def load_state_dict_strict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
    what: str = 'model',
    resample: bool = True,
    source: str = 'state dict',
) -> LoadReport:
    """Load ``sd`` into ``model``, refusing every difference that is not allow-listed.

    Position embeddings (``*pos_embed``, ``*decoder_pos_embed``) at another square grid are
    resampled (class-token aware, ``num_prefix_tokens`` of the owning module) first.
    A key whose shape differs is an error unless it matches ``allow_missing`` (it is then
    left at its initial value, e.g. a classifier with another class count).

    Args:
        model: Target module.
        sd: Flat state dict with the model's key names.
        allow_missing: fnmatch patterns of model keys that may be absent (or mis-shaped).
        allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.
        what: Name of the model in messages.
        resample: Resample position embeddings whose grid differs.
        source: Name of the checkpoint in messages.

    Returns:
        :class:`LoadReport`; its summary is logged at INFO.

    Raises:
        CheckpointError: Lists (up to 10 each) missing, unexpected and mis-shaped keys.
    """
    ready, report = _prepare(
        model,
        sd,
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
        what=what,
        resample=resample,
        source=source,
    )
    result = model.load_state_dict(ready, strict=False)
    left = [k for k in result.missing_keys if k not in report.missing_allowed]
    if left or result.unexpected_keys:  # pragma: no cover - _prepare checked this
        raise CheckpointError(
            f'{source} -> {what}: load_state_dict disagreed with the check: missing '
            f'{_listing(left)}, unexpected {_listing(result.unexpected_keys)}'
        )
    logger.info(report.summary(what, source))
    return report


def _decoder_key_names(keys: Iterable[str]) -> list[str]:
    """Decoder keys for a message: ``decoder_blocks.{i}.*`` compressed, the telling ones first."""
    order = ('decoder_embed.', 'decoder_blocks.', 'mask_token', 'decoder_pos_embed')
    out: list[str] = []
    for k in keys:
        if k.startswith('decoder_blocks.'):
            k = '.'.join(k.split('.')[:2]) + '.*'
        if k not in out:
            out.append(k)
    rank = {p: i for i, p in enumerate(order)}
    return sorted(
        out, key=lambda k: next((i for p, i in rank.items() if k.startswith(p)), len(order))
    )


def _allow_lists(
    model: nn.Module, use: str, fmt: str, sd: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """Convert ``sd`` for ``use`` and return (state dict, allow_missing, allow_unexpected)."""
    pixel_head = getattr(model, 'pixel_head', True)
    no_pixel_head = () if pixel_head else ('decoder_norm.*', 'decoder_pred.*')
    if use == 'backbone':
        # Any format -> encoder; a new classifier / fc_norm / ViTDet rel-pos may be missing.
        enc = to_encoder_state_dict(sd, keep_head=True, source=source)
        missing = ('head.*', 'fc_norm.*', '*rel_pos_*')
        unexpected: tuple[str, ...] = ('head.*', 'fc_norm.*')
        if isinstance(getattr(model, 'norm', None), nn.Identity):
            unexpected += ('norm.*',)  # global-pool models use fc_norm instead (MAE fine-tune)
        return enc, missing, unexpected
    if use == 'encoder_teacher':
        enc = to_encoder_state_dict(sd, keep_head=True, source=source)
        return enc, (), ('head.*', 'fc_norm.*')
    if use in ('mae_teacher', 'mae'):
        if not hasattr(model, 'decoder_blocks'):
            raise TypeError(f'use={use!r} needs a MaskedAutoencoderViT, got {type(model).__name__}')
        if fmt == 'g2sd_distiller':
            sd = _student_part(sd, source)
        mae = {
            k: v
            for k, v in sd.items()
            if not k.startswith(('decoderfeature_pred.', 'encoderfeature_pred.'))
        }
        if use == 'mae_teacher':
            model_decoder = [
                k for k in model.state_dict() if k.startswith('decoder_') or k == 'mask_token'
            ]
            if model_decoder and not any(k.startswith('decoder_') for k in mae):
                names = _decoder_key_names(model_decoder)
                raise CheckpointError(
                    f'{source} cannot be a generic-distillation teacher: it has no MAE decoder '
                    f'(missing {_listing(names, 6)}); {_ENCODER_ONLY_HINT}'
                )
        return mae, (), no_pixel_head
    if use == 'distiller':
        if fmt == 'g2sd_official_gd':
            return official_gd_to_distiller(sd, source=source), (), ()
        if fmt != 'g2sd_distiller':
            raise CheckpointError(
                f"{source}: use='distiller' needs a distiller checkpoint (keys 'student.*', or "
                f'an official G2SD GD file), got format {fmt!r}'
            )
        return dict(sd), (), ()
    raise ValueError(f'use must be one of {USES}, got {use!r}')


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    use: Use,
    trusted: bool = False,
    resample: bool = True,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
) -> LoadReport:
    """Load a checkpoint of any known format into ``model`` for one purpose.

    ============== ==============================================================================
    use            what is loaded and allowed
    ============== ==============================================================================
    mae_teacher    a whole MaskedAutoencoderViT teacher for G2SD; the file MUST have the MAE
                   decoder (encoder-only MAE releases are refused); ``decoder_norm.*`` /
                   ``decoder_pred.*`` may be extra when the model has no pixel head
    encoder_teacher a plain ViT encoder (D-MAE / TinyMIM teachers); decoder keys dropped,
                   ``head.*`` / ``fc_norm.*`` may be extra
    backbone       a student encoder for fine-tuning / det / seg from any format; ``head.*``,
                   ``fc_norm.*`` and ViTDet ``*rel_pos_*`` may be missing; decoder and
                   projector keys dropped; ``head.*`` / ``fc_norm.*`` (and ``norm.*`` for a
                   global-pool model) may be extra
    mae            a whole MaskedAutoencoderViT from an MAE, official G2SD or distiller file,
                   exact (``decoder_norm`` / ``decoder_pred`` may be extra without pixel head)
    distiller      our distiller (``student.*``, ``projector.*``) from ours or an official GD
                   file (converted with :func:`official_gd_to_distiller`), exact
    ============== ==============================================================================

    Args:
        model: Our VisionTransformer, MaskedAutoencoderViT or distiller.
        checkpoint: Path, loaded checkpoint or state dict.
        use: One of :data:`USES`.
        trusted: Passed to :func:`load_file` (your own mmengine training checkpoints).
        resample: Resample position embeddings to the model's grid.
        allow_missing: Extra fnmatch patterns added to the missing-key allow-list of ``use``
            (e.g. layer-scale parameters a task adapter adds).
        allow_unexpected: Extra patterns added to the unexpected-key allow-list of ``use``.

    Returns:
        :class:`LoadReport`.

    Raises:
        CheckpointError: Unreadable file, unknown format or a mismatch outside the
            allow-list of ``use``.
    """
    if use not in USES:
        raise ValueError(f'use must be one of {USES}, got {use!r}')
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        obj = load_file(source, trusted=trusted)
    elif isinstance(checkpoint, Mapping):
        source, obj = 'state dict', checkpoint
    else:
        raise TypeError(f'checkpoint must be a path or a mapping, got {type(checkpoint).__name__}')
    sd = extract_state_dict(obj, source=source)
    fmt = detect_format(sd, source=source)
    sd, use_missing, use_unexpected = _allow_lists(model, use, fmt, sd, source)
    logger.info('%s: format %s, loading as %s', source, fmt, use)
    return load_state_dict_strict(
        model,
        sd,
        allow_missing=(*use_missing, *allow_missing),
        allow_unexpected=(*use_unexpected, *allow_unexpected),
        what=f'{type(model).__name__} ({use})',
        resample=resample,
        source=source,
    )


def prepare_backbone_state_dict(
    model: nn.Module, sd: Mapping[str, Any], *, source: str = 'checkpoint'
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Verify a checkpoint as ``use='backbone'`` and return a state dict *complete* for ``model``.

    For loaders that insist on ``strict=True`` (timm's ``load_pretrained``): allowed missing
    keys (a new head, ``fc_norm``) and allow-listed mis-shaped keys are filled with the
    model's own initial tensors, allowed extra keys are dropped, position embeddings are
    resampled.

    Args:
        model: Target ViT.
        sd: Any known format.
        source: Name used in messages.

    Returns:
        (state dict with exactly the model's keys, :class:`LoadReport`).
    """
    flat = extract_state_dict(sd, source=source)
    fmt = detect_format(flat, source=source)
    enc, allow_missing, allow_unexpected = _allow_lists(model, 'backbone', fmt, flat, source)
    ready, report = _prepare(
        model,
        enc,
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
        what=f'{type(model).__name__} (backbone)',
        resample=True,
        source=source,
    )
    model_sd = model.state_dict()
    for k in report.missing_allowed:
        ready[k] = model_sd[k]
    logger.info('%s: format %s\n%s', source, fmt, report.summary(type(model).__name__, source))
    return ready, report
