"""Strict loading: registered uses, resampling, dtype checks and load summaries.

Part of the loader of G2SD (Huang et al., CVPR 2023, arXiv 2302.14771), which loads its
teachers strictly (the official code's ``strict=False`` silently gives a random decoder).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from g2sd.checkpoint._common import CheckpointError, _listing, _match
from g2sd.checkpoint.formats import (
    _NON_ENCODER,
    detect_format,
    drop_distillation_token,
    extract_state_dict,
    official_gd_to_distiller,
    select_encoder,
    strip_prefixes,
)
from g2sd.checkpoint.reading import load_file
from g2sd.layers.pos_embed import (
    resample_pos_embed,
    resample_rel_pos,
    resample_rel_pos_bias_table,
)

__all__ = [
    'USES',
    'LoadReport',
    'UsePlan',
    'load_pretrained',
    'load_state_dict_strict',
    'prepare_backbone_state_dict',
    'register_use',
]

logger = logging.getLogger(__name__)

_ENCODER_ONLY_HINT = (
    "this looks like MAE's encoder-only release (mae_pretrain_vit_base.pth); generic "
    'distillation needs the decoder: use mae_pretrain_vit_base_full.pth or a checkpoint '
    "from g2sd's MAE config"
)
# Prefixes of wrappers shared by a checkpoint and removed for use='whole' when no model
# key carries them (a teacher trained inside a distiller, a classifier file, DDP).
WHOLE_PREFIXES = ('student.', 'backbone.', 'module.')


@dataclass
class LoadReport:
    """What a strict load did.

    Attributes:
        loaded: Model keys filled from the checkpoint.
        missing_allowed: Model keys left at their initial value (allow-listed as missing,
            including allow-listed keys whose checkpoint shape did not fit).
        unexpected_ignored: Checkpoint keys ignored (allow-listed as unexpected).
        resampled: Position-embedding / rel-pos keys resampled to the model's size.
        cast: Keys whose floating dtype was converted to the model's (e.g. fp16 -> fp32).
        dropped: Top-level parts of the checkpoint that the use does not load (e.g.
            ``neck``, ``decode_head``, ``tch_model``, ``projector``, ``decoder``).
        fmt: Checkpoint format (:data:`g2sd.checkpoint.FORMATS`), '' when not detected.
    """

    loaded: list[str] = field(default_factory=list)
    missing_allowed: list[str] = field(default_factory=list)
    unexpected_ignored: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    cast: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fmt: str = ''

    def summary(self, what: str = 'model', source: str = 'state dict') -> str:
        """One-screen text summary (counts plus the first names)."""
        fmt = f' (format {self.fmt})' if self.fmt else ''
        lines = [f'loaded {len(self.loaded)} tensors into {what} from {source}{fmt}']
        for label, keys in (
            ('missing (allowed, kept at init)', self.missing_allowed),
            ('unexpected (ignored)', self.unexpected_ignored),
            ('resampled', self.resampled),
            ('cast', self.cast),
            ('dropped checkpoint parts', self.dropped),
        ):
            if keys:
                lines.append(f'  {label}: {len(keys)}: {_listing(keys)}')
        return '\n'.join(lines)


def _log(text: str) -> None:
    """Log to ``g2sd.checkpoint`` and, inside an mmengine run, to its current logger.

    mmengine is not imported here: when it is not loaded yet no runner is logging.
    """
    logger.info(text)
    if 'mmengine.logging' not in sys.modules:
        return
    from mmengine.logging import MMLogger, print_log

    if MMLogger._instance_dict:  # a runner (or the user) created a logger: the train log
        print_log(text, logger='current', level=logging.INFO)


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
        # ViTDet-style backbones store the table at their pre-training grid, with a class
        # slot of its own (pos_embed_grid / num_pos_prefix_tokens); plain ViTs at img_size.
        prefix = 1 if is_decoder else int(getattr(owner, 'num_prefix_tokens', 1))
        new_grid = None
        if not is_decoder:
            prefix = int(getattr(owner, 'num_pos_prefix_tokens', prefix))
            new_grid = getattr(owner, 'pos_embed_grid', None)
        if new_grid is None:
            new_grid = getattr(getattr(owner, 'patch_embed', None), 'grid_size', None)
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


def _resample_rel_pos(
    sd: dict[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor], source: str
) -> list[str]:
    """Resample ``*rel_pos_h`` / ``*rel_pos_w`` tables (L, C) of ``sd`` in place."""
    done: list[str] = []
    for key, value in list(sd.items()):
        if not key.endswith(('rel_pos_h', 'rel_pos_w')) or key not in model_sd:
            continue
        target = model_sd[key]
        if value.ndim != 2 or target.ndim != 2 or value.shape[1] != target.shape[1]:
            continue  # reported as a shape mismatch
        if value.shape[0] == target.shape[0]:
            continue
        sd[key] = resample_rel_pos(value, int(target.shape[0]))
        done.append(key)
        logger.info(
            '%s: resampled %s from %d to %d rows', source, key, value.shape[0], target.shape[0]
        )
    return done


# Trailing rows of a BEiT relative position bias table that are not offsets (class rows).
_BIAS_EXTRA_ROWS = 3


def _bias_table_grid(model: nn.Module, key: str, rows: int) -> tuple[int, int] | None:
    """Token grid (Wh, Ww) of the model's BEiT bias table ``key`` with ``rows`` rows.

    The grid of the ViT holding the block (``...blocks.N.attn.relative_position_bias_table``:
    its ``patch_embed.grid_size``) when it fits the row count, else the square grid the row
    count gives; None when neither fits.
    """
    n = rows - _BIAS_EXTRA_ROWS
    parts = key.split('.')
    if 'blocks' in parts:
        prefix = '.'.join(parts[: parts.index('blocks')])
        try:
            owner = model.get_submodule(prefix)
        except AttributeError:
            owner = None
        grid = getattr(getattr(owner, 'patch_embed', None), 'grid_size', None)
        if grid is not None and (2 * grid[0] - 1) * (2 * grid[1] - 1) == n:
            return (int(grid[0]), int(grid[1]))
    side = math.isqrt(max(n, 0))
    if n <= 0 or side * side != n or side % 2 == 0:
        return None
    return ((side + 1) // 2, (side + 1) // 2)


def _resample_rel_pos_bias_tables(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    model_sd: Mapping[str, torch.Tensor],
    source: str,
) -> list[str]:
    """Resample BEiT ``*relative_position_bias_table`` entries (L, heads) of ``sd`` in place.

    BEiT's geometric-sequence interpolation
    (:func:`g2sd.layers.pos_embed.resample_rel_pos_bias_table`): the checkpoint's grid from its
    row count (square), the model's from its own table; the three class rows are kept.
    """
    done: list[str] = []
    for key, value in list(sd.items()):
        if not key.endswith('relative_position_bias_table') or key not in model_sd:
            continue
        target = model_sd[key]
        if value.ndim != 2 or target.ndim != 2 or value.shape[1] != target.shape[1]:
            continue  # reported as a shape mismatch
        if value.shape[0] == target.shape[0]:
            continue
        n_old = value.shape[0] - _BIAS_EXTRA_ROWS
        side = math.isqrt(max(n_old, 0))
        grid = _bias_table_grid(model, key, int(target.shape[0]))
        if grid is None or n_old <= 0 or side * side != n_old or side % 2 == 0 or side < 5:
            continue  # not a square BEiT table the spline can fit: reported as a mismatch
        sd[key] = resample_rel_pos_bias_table(value, grid, _BIAS_EXTRA_ROWS)
        done.append(key)
        old = (side + 1) // 2
        logger.info(
            '%s: resampled %s from a %dx%d to a %dx%d grid (%d to %d rows)',
            source,
            key,
            old,
            old,
            grid[0],
            grid[1],
            value.shape[0],
            target.shape[0],
        )
    return done


def _check_dtypes(
    sd: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor], source: str, what: str
) -> list[str]:
    """Refuse integer / bool tensors for floating model tensors (and the reverse).

    Returns:
        Keys whose floating dtype differs from the model's (cast on load).
    """
    bad: list[str] = []
    cast: list[str] = []
    for k, v in sd.items():
        target = model_sd.get(k)
        if target is None:
            continue
        if v.is_floating_point() != target.is_floating_point():
            bad.append(f'{k}: checkpoint {v.dtype} vs model {target.dtype}')
        elif v.dtype != target.dtype:
            cast.append(k)
    if bad:
        raise CheckpointError(
            f'{source} does not fit {what}: non-floating tensors for floating model tensors '
            f'(or the reverse) would be cast silently ({len(bad)}): {_listing(bad)}'
        )
    return cast


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
        report.resampled += _resample_rel_pos(sd, model_sd, source)
        report.resampled += _resample_rel_pos_bias_tables(model, sd, model_sd, source)
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
    report.cast = _check_dtypes(ready, model_sd, source, what)
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
    resampled (class-token aware, ``num_prefix_tokens`` of the owning module) first, and
    ViTDet relative-position tables (``*rel_pos_h`` / ``*rel_pos_w``, (L, C)) of another
    length are resampled with :func:`g2sd.layers.pos_embed.resample_rel_pos`, and BEiT
    relative position bias tables (``*relative_position_bias_table``, (L, heads)) of another
    grid with :func:`g2sd.layers.pos_embed.resample_rel_pos_bias_table` (BEiT's
    geometric-sequence interpolation, class rows kept).
    A key whose shape differs is an error unless it matches ``allow_missing`` (it is then
    left at its initial value, e.g. a classifier with another class count). Integer / bool
    tensors for floating model tensors are refused (they would be cast silently); other
    floating dtypes (fp16, bf16) are cast and listed as ``cast`` in the summary.

    Args:
        model: Target module.
        sd: Flat state dict with the model's key names.
        allow_missing: fnmatch patterns of model keys that may be absent (or mis-shaped).
        allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.
        what: Name of the model in messages.
        resample: Resample position embeddings / rel-pos tables whose size differs.
        source: Name of the checkpoint in messages.

    Returns:
        :class:`LoadReport`; its summary is logged at INFO (``g2sd.checkpoint`` and, in an
        mmengine run, the current MMLogger, i.e. the train log).

    Raises:
        CheckpointError: Lists (up to 10 each) missing, unexpected, mis-shaped keys and
            keys of the wrong dtype kind.
    """
    return _load_strict(
        model,
        sd,
        LoadReport(),
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
        what=what,
        resample=resample,
        source=source,
    )


def _load_strict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    base: LoadReport,
    **kwargs: Any,
) -> LoadReport:
    ready, report = _prepare(model, sd, **kwargs)
    report.dropped, report.fmt = list(base.dropped), base.fmt
    # Not a lenient load: _prepare refused every key outside the allow-lists; allowed missing
    # keys are absent from ``ready``, and the result is checked again below.
    result = model.load_state_dict(ready, strict=False)
    left = [k for k in result.missing_keys if k not in report.missing_allowed]
    if left or result.unexpected_keys:  # pragma: no cover - _prepare checked this
        raise CheckpointError(
            f'{kwargs["source"]} -> {kwargs["what"]}: load_state_dict disagreed with the '
            f'check: missing {_listing(left)}, unexpected {_listing(result.unexpected_keys)}'
        )
    _log(report.summary(kwargs['what'], kwargs['source']))
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


@dataclass
class UsePlan:
    """What a load use makes of a checkpoint: the state dict to load and its allow-lists.

    Attributes:
        state_dict: Flat state dict with the model's key names.
        allow_missing: fnmatch patterns of model keys that may be absent (or mis-shaped).
        allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.
        dropped: Names of checkpoint parts the use left out (for the load report).
    """

    state_dict: dict[str, torch.Tensor]
    allow_missing: tuple[str, ...] = ()
    allow_unexpected: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


UseResult = UsePlan | tuple[Mapping[str, torch.Tensor], Sequence[str], Sequence[str]]
#: A load use: ``fn(model, fmt, sd, source)``. ``sd`` is the unwrapped flat checkpoint
#: (:func:`g2sd.checkpoint.extract_state_dict`), ``fmt`` its format (one of
#: :data:`g2sd.checkpoint.FORMATS`, or ``''`` when it is not a ViT checkpoint g2sd knows),
#: ``source`` its name for messages. Returns a :class:`UsePlan` or a tuple
#: ``(state_dict, allow_missing, allow_unexpected)``; raises :class:`CheckpointError` for a
#: checkpoint that cannot serve the use and ``TypeError`` for a model that cannot.
UseFn = Callable[[nn.Module, str, dict[str, torch.Tensor], str], UseResult]

_USES: dict[str, UseFn] = {}


class _RegisteredUses(Sequence[str]):
    """Read-only, always current tuple-like view of the registered use names."""

    def __getitem__(self, index: Any) -> Any:
        return tuple(_USES)[index]

    def __len__(self) -> int:
        return len(_USES)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_USES))

    def __contains__(self, name: object) -> bool:
        return name in _USES

    def __eq__(self, other: object) -> bool:
        return tuple(_USES) == (tuple(other) if isinstance(other, Sequence) else other)

    def __hash__(self) -> int:
        return hash(tuple(_USES))

    def __repr__(self) -> str:
        return repr(tuple(_USES))


#: Names of the registered uses (a live view: uses registered later appear in it).
USES: Sequence[str] = _RegisteredUses()


def register_use(name: str, fn: UseFn, *, overwrite: bool = False) -> None:
    """Register a load use for :func:`load_pretrained` (``g2sd.det`` / ``g2sd.seg`` extend it).

    Args:
        name: The ``use=`` name.
        fn: See :data:`UseFn`: ``fn(model, fmt, sd, source) -> UsePlan`` (or the tuple
            ``(state_dict, allow_missing, allow_unexpected)``).
        overwrite: Replace an existing use of that name.

    Raises:
        TypeError: ``name`` is not a non-empty str or ``fn`` is not callable.
        ValueError: ``name`` is registered already and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f'use name must be a non-empty str, got {name!r}')
    if not callable(fn):
        raise TypeError(f'use {name!r}: fn must be callable, got {type(fn).__name__}')
    if name in _USES and not overwrite:
        raise ValueError(
            f'load use {name!r} is registered already ({_USES[name]!r}); pass overwrite=True'
        )
    _USES[name] = fn


def _plan(result: UseResult, name: str) -> UsePlan:
    if isinstance(result, UsePlan):
        return result
    if isinstance(result, tuple) and len(result) == 3:
        sd, missing, unexpected = result
        return UsePlan(dict(sd), tuple(missing), tuple(unexpected))
    raise TypeError(
        f'load use {name!r} must return a UsePlan or (state_dict, allow_missing, '
        f'allow_unexpected), got {type(result).__name__}'
    )


def _need_vit(fmt: str, sd: Mapping[str, torch.Tensor], source: str) -> None:
    if not fmt:
        detect_format(sd, source=source)  # raises with the key listing


def _encoder(
    model: nn.Module, fmt: str, sd: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model-ready encoder part of any ViT format and the dropped part names."""
    _need_vit(fmt, sd, source)
    enc, sub_fmt, dropped = select_encoder(sd, source=source)
    if sub_fmt == 'deit_distilled':
        model_keys = model.state_dict()
        keep = 'dist_token' in model_keys and 'dist_pos_embed' in model_keys
        enc = drop_distillation_token(enc, keep_dist_pos=keep)
        if not keep:
            dropped.append('dist_token')
    decoder = [k for k in enc if _match(k, _NON_ENCODER)]
    if decoder:
        dropped += sorted(
            {'decoder_*' if k.startswith('decoder_') else k.split('.')[0] for k in decoder}
        )
        enc = {k: v for k, v in enc.items() if k not in set(decoder)}
    return enc, dropped


#: Model keys of the ``'backbone'`` use that a pre-training file may lack: a new classifier,
#: ``fc_norm`` and ViTDet's zero-init rel-pos tables.
_BACKBONE_NEW = ('head.*', 'fc_norm.*', '*rel_pos_*')
#: ... and, when the file has none of them, the BEiT-style seg backbone's zero-init relative
#: position bias tables and layer scales (init 1.0): MAE / GD never trained them, and the
#: official G2SD seg code starts them at their init. A file that has them must fit.
_BACKBONE_NEW_IF_ABSENT = ('*relative_position_bias_table', '*gamma_1', '*gamma_2')


def _use_backbone(model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str) -> UsePlan:
    """Any format -> encoder; a new classifier / fc_norm / rel-pos / layer scale may be missing.

    BEiT relative position bias tables and layer scales may be missing only when the file
    has none (an MAE / GD checkpoint); otherwise they load (tables of another square grid
    resampled) or the load fails. ``*relative_position_index`` buffers of BEiT / mmseg files
    are ignored (derived from the grid; ours is a non-persistent buffer).
    """
    enc, dropped = _encoder(model, fmt, sd, source)
    missing = _BACKBONE_NEW + tuple(
        p for p in _BACKBONE_NEW_IF_ABSENT if not any(_match(k, (p,)) for k in enc)
    )
    unexpected: tuple[str, ...] = ('head.*', 'fc_norm.*', '*relative_position_index')
    if isinstance(getattr(model, 'norm', None), nn.Identity):
        unexpected += ('norm.*',)  # global-pool models use fc_norm instead (MAE fine-tune)
    if getattr(model, 'cls_token', None) is None:
        unexpected += ('cls_token',)  # ViTDet / BEiT backbones have no class token
    return UsePlan(enc, missing, unexpected, tuple(dropped))


def _use_encoder_teacher(
    model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str
) -> UsePlan:
    """A plain ViT encoder teacher; decoder / heads dropped, the encoder exact."""
    enc, dropped = _encoder(model, fmt, sd, source)
    return UsePlan(enc, (), ('head.*', 'fc_norm.*'), tuple(dropped))


def _use_mae(
    model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str, *, teacher: bool
) -> UsePlan:
    use = 'mae_teacher' if teacher else 'mae'
    if not hasattr(model, 'decoder_blocks'):
        raise TypeError(f'use={use!r} needs a MaskedAutoencoderViT, got {type(model).__name__}')
    _need_vit(fmt, sd, source)
    part, _, dropped = select_encoder(sd, source=source)
    mae = {
        k: v
        for k, v in part.items()
        if not k.startswith(('decoderfeature_pred.', 'encoderfeature_pred.'))
    }
    dropped += sorted({k.split('.', 1)[0] for k in part if k not in mae})
    if teacher:
        model_decoder = [
            k for k in model.state_dict() if k.startswith('decoder_') or k == 'mask_token'
        ]
        if model_decoder and not any(k.startswith('decoder_') for k in mae):
            names = _decoder_key_names(model_decoder)
            raise CheckpointError(
                f'{source} cannot be a generic-distillation teacher: it has no MAE decoder '
                f'(missing {_listing(names, 6)}); {_ENCODER_ONLY_HINT}'
            )
    no_pixel_head = (
        () if getattr(model, 'pixel_head', True) else ('decoder_norm.*', 'decoder_pred.*')
    )
    return UsePlan(mae, (), no_pixel_head, tuple(dropped))


def _use_mae_teacher(
    model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str
) -> UsePlan:
    """A whole MaskedAutoencoderViT teacher; the file must have the MAE decoder."""
    return _use_mae(model, fmt, sd, source, teacher=True)


def _use_mae_whole(model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str) -> UsePlan:
    """A whole MaskedAutoencoderViT from an MAE, official G2SD, distiller or MAE-Lite file."""
    return _use_mae(model, fmt, sd, source, teacher=False)


def _use_distiller(model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str) -> UsePlan:
    """Our distiller (``student.*``, ``projector.*``) from ours or an official GD file."""
    if fmt == 'g2sd_official_gd':
        return UsePlan(official_gd_to_distiller(sd, source=source))
    if fmt != 'g2sd_distiller':
        raise CheckpointError(
            f"{source}: use='distiller' needs a distiller checkpoint (keys 'student.*', or "
            f'an official G2SD GD file), got format {fmt or "unknown"!r}'
        )
    return UsePlan(dict(sd))


#: Prefixes under which a wrapper model holds a plain file's weights (``g2sd.ViTClassifier``:
#: ``backbone.``; ``g2sd.DistillModel``: ``student.`` / ``student.backbone.``; the deprecated
#: ``g2sd.PretrainModel``: ``algorithm.``, whose prefix :func:`extract_state_dict` removes).
NEST_PREFIXES = ('backbone.', 'student.', 'student.backbone.', 'algorithm.')


def _use_whole(model: nn.Module, fmt: str, sd: dict[str, torch.Tensor], source: str) -> UsePlan:
    """The model's own state dict, exactly.

    Of the checkpoint as read, with shared wrapper prefixes the model does not have
    (``student.``, ``backbone.``, ``module.``) removed, and either of these nested under one
    of :data:`NEST_PREFIXES`, the layout that names the most model keys is taken; the
    strict check then refuses whatever still differs.
    """
    model_keys = set(model.state_dict())
    stripped = strip_prefixes(sd, WHOLE_PREFIXES, model_keys=list(model_keys))
    best, hits = sd, sum(k in model_keys for k in sd)
    for base in (sd, stripped):
        for prefix in ('', *NEST_PREFIXES):
            cand = {prefix + k: v for k, v in base.items()}
            n = sum(k in model_keys for k in cand)
            if n > hits:
                best, hits = cand, n
    if best is not sd:
        logger.info('%s: keys aligned to the layout of %s', source, type(model).__name__)
    return UsePlan(best)


for _name, _fn in (
    ('mae_teacher', _use_mae_teacher),
    ('encoder_teacher', _use_encoder_teacher),
    ('backbone', _use_backbone),
    ('mae', _use_mae_whole),
    ('distiller', _use_distiller),
    ('whole', _use_whole),
):
    register_use(_name, _fn)


def _read(
    checkpoint: str | os.PathLike | Mapping[str, Any], trusted: bool, source: str | None
) -> tuple[Any, str]:
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        return load_file(path, trusted=trusted), source or path
    if isinstance(checkpoint, Mapping):
        return checkpoint, source or 'in-memory state dict'
    raise TypeError(f'checkpoint must be a path or a mapping, got {type(checkpoint).__name__}')


def _detect(sd: Mapping[str, torch.Tensor], source: str) -> str:
    try:
        return detect_format(sd, source=source)
    except CheckpointError:
        return ''


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    use: str,
    trusted: bool = False,
    resample: bool = True,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
    source: str | None = None,
) -> LoadReport:
    """Load a checkpoint of any known format into ``model`` for one purpose.

    =============== ==============================================================================
    use             what is loaded and allowed
    =============== ==============================================================================
    mae_teacher     a whole MaskedAutoencoderViT teacher for G2SD; the file MUST have the MAE
                    decoder (encoder-only MAE releases are refused); ``decoder_norm.*`` /
                    ``decoder_pred.*`` may be extra when the model has no pixel head
    encoder_teacher a plain ViT encoder (D-MAE / TinyMIM teachers, classifier teachers) from
                    any format; decoder keys dropped, ``head.*`` / ``fc_norm.*`` may be extra
    backbone        a student encoder for fine-tuning / det / seg from any format; ``head.*``,
                    ``fc_norm.*``, ViTDet ``*rel_pos_*`` and (when the file has none)
                    BEiT-style ``*relative_position_bias_table`` and layer scales
                    ``*gamma_1`` / ``*gamma_2`` may be missing; decoder and projector keys
                    dropped;
                    ``head.*`` / ``fc_norm.*`` / ``*relative_position_index`` (and ``norm.*``
                    for a global-pool model) may be extra
    mae             a whole MaskedAutoencoderViT from an MAE, official G2SD, distiller or
                    MAE-Lite file, exact (``decoder_norm`` / ``decoder_pred`` may be extra
                    without pixel head)
    distiller       our distiller (``student.*``, ``projector.*``) from ours or an official GD
                    file (converted with :func:`official_gd_to_distiller`), exact
    whole           the model's own state dict, exactly, any model (mmdet / mmseg teachers);
                    ``student.`` / ``backbone.`` / ``module.`` removed first when every
                    checkpoint key and no model key carries them
    =============== ==============================================================================

    For ``backbone``, ``encoder_teacher``, ``mae`` and ``mae_teacher`` the ViT part of a
    wrapper is taken (``student.*`` of a distiller, ``backbone.*`` of an mmdet / mmseg /
    classifier file, ``model.*`` of MAE-Lite) and the other parts are listed as dropped in
    the report. More uses: :func:`register_use`.

    Args:
        model: Our VisionTransformer, MaskedAutoencoderViT, distiller or (``whole``) any
            module.
        checkpoint: Path, loaded checkpoint or state dict.
        use: One of :data:`USES`.
        trusted: Passed to :func:`load_file` (your own mmengine training checkpoints).
        resample: Resample position embeddings / rel-pos / rel-pos-bias tables to the
            model's size.
        allow_missing: Extra fnmatch patterns added to the missing-key allow-list of ``use``
            (e.g. layer-scale parameters a task adapter adds).
        allow_unexpected: Extra patterns added to the unexpected-key allow-list of ``use``.
        source: Name of the checkpoint in logs and errors (default: the path, or
            ``'in-memory state dict'``).

    Returns:
        :class:`LoadReport`.

    Raises:
        ValueError: ``use`` is not registered.
        TypeError: ``checkpoint`` is neither a path nor a mapping, or ``model`` cannot
            serve ``use``.
        CheckpointError: Unreadable file, unknown format or a mismatch outside the
            allow-list of ``use``.
    """
    fn = _USES.get(use) if isinstance(use, str) else None
    if fn is None:
        raise ValueError(f'use must be one of {tuple(_USES)}, got {use!r}')
    obj, source = _read(checkpoint, trusted, source)
    sd = extract_state_dict(obj, source=source)
    fmt = _detect(sd, source)
    plan = _plan(fn(model, fmt, sd, source), use)
    logger.info('%s: format %s, loading as %s', source, fmt or 'unknown', use)
    return _load_strict(
        model,
        plan.state_dict,
        LoadReport(dropped=list(plan.dropped), fmt=fmt),
        allow_missing=(*plan.allow_missing, *allow_missing),
        allow_unexpected=(*plan.allow_unexpected, *allow_unexpected),
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
    plan = _use_backbone(model, fmt, flat, source)
    ready, report = _prepare(
        model,
        plan.state_dict,
        allow_missing=plan.allow_missing,
        allow_unexpected=plan.allow_unexpected,
        what=f'{type(model).__name__} (backbone)',
        resample=True,
        source=source,
    )
    report.dropped, report.fmt = list(plan.dropped), fmt
    model_sd = model.state_dict()
    for k in report.missing_allowed:
        ready[k] = model_sd[k]
    ready = {k: v.to(model_sd[k].dtype) for k, v in ready.items()}
    _log(report.summary(type(model).__name__, source))
    return ready, report
