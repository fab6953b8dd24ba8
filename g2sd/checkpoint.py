"""The one checkpoint loader / converter of g2sd.

Every weight file enters the suite here: the G2SD teachers and students, the timm
registration (``g2sd.models.timm_models``), the mmdet / mmseg backbones and the tools in
``tools/convert``. It fixes weakness W-1 of the official G2SD code (teachers loaded with
``strict=False``, so MAE's encoder-only release silently gives a random teacher decoder):
weights are loaded strictly, apart from a small allow-list per use, and a decoder-less
teacher is refused with a message that says what to download instead.

Reading (:func:`load_file`)
    ``.pth`` / ``.pt`` / ``.bin`` (or any other suffix) go through
    ``torch.load(map_location='cpu', weights_only=True)`` with ``argparse.Namespace``
    allow-listed (MAE and official G2SD files carry ``{'model': ..., 'args': Namespace}``).
    Our own mmengine training checkpoints also hold mmengine's ``HistoryBuffer`` and numpy
    arrays / scalars in ``message_hub``; ``trusted=True`` allow-lists the numpy data globals
    and maps ``HistoryBuffer`` (and the ``getattr`` its pickle uses) to inert stand-ins
    (still ``weights_only=True``, so no code from the file ever runs). Anything else is
    refused, naming the globals. ``.safetensors`` files are read with safetensors.

Formats (:func:`detect_format`), decided from key patterns after unwrapping
(``state_dict`` / ``model`` / ``module`` nesting, ``module.`` / ``_orig_mod.`` /
``algorithm.`` prefixes shared by every key):

================== ===========================================================================
format             key pattern
================== ===========================================================================
g2sd_distiller     any ``student.*`` key (our distillers: ``student.*`` plus ``projector.*`` etc.)
g2sd_official_gd   ``decoderfeature_pred.*`` or ``encoderfeature_pred.*`` (official GD student:
                   MAE keys + the two projection MLPs)
mae_full           ``mask_token`` or any ``decoder_*`` key (MAE encoder + decoder,
                   e.g. ``mae_pretrain_vit_base_full.pth``, ``mae_visualize_vit_base.pth``)
timm               ``head.weight`` and no ``fc_norm.*`` (ViT with ``norm`` and a token head)
mae_encoder        any other ViT (``patch_embed.proj.weight``): the encoder-only MAE release
                   ``mae_pretrain_vit_*.pth``, MAE fine-tuned (``fc_norm`` + ``head``), our
                   extracted backbones, headless timm ViTs
================== ===========================================================================

All formats share the timm / MAE encoder layout (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*`` / ``fc_norm.*``, ``head.*``), so the
conversions below only select and rename prefixes.

Loading (:func:`load_state_dict_strict`, :func:`load_pretrained`) verifies missing,
unexpected and shape-mismatched keys against fnmatch allow-lists, resamples ``pos_embed`` /
``decoder_pos_embed`` to the model's grid, raises :class:`CheckpointError` for anything not
allowed, and logs a one-screen summary.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from g2sd.models.vit import resample_pos_embed

__all__ = [
    'FORMATS',
    'MMEngineStateStub',
    'USES',
    'CheckpointError',
    'LoadReport',
    'detect_format',
    'extract_state_dict',
    'load_file',
    'load_pretrained',
    'load_state_dict_strict',
    'official_gd_to_distiller',
    'prepare_backbone_state_dict',
    'save_state_dict',
    'to_encoder_state_dict',
]

logger = logging.getLogger(__name__)

FORMATS = ('mae_full', 'mae_encoder', 'g2sd_official_gd', 'g2sd_distiller', 'timm')
USES = ('mae_teacher', 'encoder_teacher', 'backbone', 'mae', 'distiller')

Use = Literal['mae_teacher', 'encoder_teacher', 'backbone', 'mae', 'distiller']

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
_MAX_LISTED = 10

_ENCODER_ONLY_HINT = (
    "this looks like MAE's encoder-only release (mae_pretrain_vit_base.pth); generic "
    'distillation needs the decoder: use mae_pretrain_vit_base_full.pth or a checkpoint '
    "from g2sd's MAE config"
)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and problem."""


# --------------------------------------------------------------------------- reading
class MMEngineStateStub:
    """Inert stand-in for mmengine's ``HistoryBuffer`` when reading training checkpoints.

    ``HistoryBuffer`` pickles its class-level ``_statistics_methods`` as
    ``getattr(HistoryBuffer, 'min')`` etc., and its ``__setstate__`` writes them into a
    class attribute. Neither the real class nor ``getattr`` is allow-listed: both names are
    mapped to inert stand-ins, and the pickled state is kept as a plain dict in ``state``.
    """

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return 'MMEngineStateStub(HistoryBuffer)'


def _inert_getattr(obj: Any, name: str) -> str:
    """Stand-in for ``builtins.getattr`` in pickles: returns a description, looks nothing up."""
    owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    return f'<unresolved {owner}.{name}>'


def _mmengine_safe_globals() -> list[Any]:
    """Globals of mmengine training checkpoints (``message_hub``), for ``trusted=True``.

    mmengine's ``Runner.save_checkpoint`` stores ``message_hub.state_dict()``: ``HistoryBuffer``
    objects holding numpy arrays, and runtime info that may hold numpy scalars. Measured on
    torch 2.14 / mmengine 0.10.7 / numpy 2.4, such a file needs ``numpy._core.multiarray.
    {_reconstruct,scalar}``, ``numpy.ndarray``, ``numpy.dtype``, ``mmengine.logging.
    history_buffer.HistoryBuffer`` and ``builtins.getattr``. numpy data are rebuilt by numpy
    from bytes; ``HistoryBuffer`` and ``getattr`` are replaced by inert stand-ins
    (:class:`MMEngineStateStub`, a ``getattr`` that returns a string), so no mmengine code and
    no attribute lookup runs.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    out: list[Any] = [
        (MMEngineStateStub, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_inert_getattr, 'builtins.getattr'),
        np.ndarray,
        np.dtype,
    ]
    for name in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out.append((multiarray._reconstruct, f'{name}._reconstruct'))
        out.append((multiarray.scalar, f'{name}.scalar'))
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out += [v for v in vars(dtypes).values() if isinstance(v, type) and issubclass(v, np.dtype)]
    return out


def _global_name(obj: Any) -> str:
    if isinstance(obj, tuple):
        return obj[1]
    return f'{obj.__module__}.{obj.__qualname__}'


def _unsafe_globals(path: str, error: BaseException, allowed: Iterable[Any]) -> list[str]:
    """Globals of a pickle that are outside ``allowed`` (empty if it cannot tell)."""
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) file, truncated, ...
        names = re.findall(r'GLOBAL (\S+) was not an allowed global', str(error))
    ok = {_global_name(a) for a in allowed}
    return [n for n in names if n not in ok]


def _is_mmengine_state(names: Iterable[str]) -> bool:
    return all(
        n.startswith(('numpy.', 'mmengine.logging.history_buffer.')) or n == 'builtins.getattr'
        for n in names
    )


def load_file(path: str | os.PathLike, *, trusted: bool = False) -> Any:
    """Read a checkpoint file safely on the CPU.

    Args:
        path: ``.safetensors`` (read with safetensors) or a PyTorch file (any other suffix,
            read with ``torch.load(weights_only=True)``, ``argparse.Namespace`` allowed).
        trusted: The file is one of your own mmengine training checkpoints: also allow
            numpy arrays / scalars / dtypes and read mmengine's ``HistoryBuffer`` into inert
            stand-ins (see :func:`_mmengine_safe_globals`; ``weights_only`` stays on, no
            code from the file runs). Third-party files (MAE, official G2SD, timm, extracted
            backbones) never need it.

    Returns:
        The loaded object (usually a dict); for safetensors a flat ``{name: tensor}`` dict.

    Raises:
        CheckpointError: Missing file, unreadable / truncated / corrupt file, or a pickle
            that needs globals outside the allow-list (named in the message).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist')
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint {path!r} is a directory, not a file')
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file as _st_load

            return _st_load(path, device='cpu')
        except Exception as e:
            raise CheckpointError(
                f'{path!r} is not a readable safetensors file (truncated or corrupt?): '
                f'{type(e).__name__}: {_first_line(e)}'
            ) from e
    allowed: list[Any] = [argparse.Namespace]
    if trusted:
        allowed += _mmengine_safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        unsafe = _unsafe_globals(path, e, allowed)
        if unsafe:
            msg = (
                f'{path!r} needs pickle globals that are not on the safe list: '
                f'{_listing(unsafe)}; refused for safety (g2sd loads with weights_only=True '
                'and never unpickles arbitrary objects)'
            )
            if not trusted and _is_mmengine_state(unsafe):
                msg += (
                    '. This looks like an mmengine training checkpoint: if you made it, pass '
                    'trusted=True (numpy data; HistoryBuffer read as an inert stub) or export the '
                    'weights first with tools/convert/extract_student.py'
                )
            raise CheckpointError(msg) from e
        # weights_only refused an operation (not a global): name it; else the bytes are bad.
        wo = re.search(
            r'WeightsUnpickler error: ((?:Unsupported|Can only|Trying to)\S* .*)', str(e)
        )
        if wo:
            raise CheckpointError(
                f'{path!r} cannot be read with weights_only=True: {wo.group(1)[:200]}; '
                'refused for safety'
            ) from e
        raise CheckpointError(
            f'{path!r} is not a readable PyTorch checkpoint (truncated or corrupt?): '
            f'{type(e).__name__}: {_first_line(e)}'
        ) from e


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ''
    return line if len(line) <= limit else line[: limit - 3] + '...'


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ', '.join(items[:limit])
    if len(items) > limit:
        shown += f' and {len(items) - limit} more'
    return shown


# ------------------------------------------------------------------- state dicts
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


def _match(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


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


# ----------------------------------------------------------------------- loading
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


# ------------------------------------------------------------------------ saving
def _json_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f'meta must be a mapping, got {type(meta).__name__}')
    try:
        return json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f'meta must be JSON-serialisable (str/int/float/bool/list/dict): {e}'
        ) from e


def save_state_dict(
    sd: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write a state dict atomically (``path + '.tmp'`` then ``os.replace``).

    ``.safetensors``: tensors made contiguous (and unshared), ``meta`` stored as string
    metadata (non-string values JSON-encoded). Otherwise ``torch.save({'state_dict': sd,
    'meta': meta})``, readable with ``weights_only=True`` by us, timm and mmengine.

    Args:
        sd: Flat ``{name: tensor}``.
        path: Output file.
        meta: JSON-serialisable metadata.

    Raises:
        TypeError: Non-tensor values or non-JSON metadata.
    """
    path = os.fspath(path)
    bad = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f'state dict values must be tensors; not tensors: {_listing(bad)}')
    meta_json = _json_meta(meta)
    tensors = {k: v.detach().cpu() for k, v in sd.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import save_file

            str_meta = {
                str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta_json.items()
            }
            save_file(
                {k: v.contiguous().clone() for k, v in tensors.items()}, tmp, metadata=str_meta
            )
        else:
            torch.save({'state_dict': tensors, 'meta': meta_json}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info('saved %d tensors to %s', len(tensors), path)
