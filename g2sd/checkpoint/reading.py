"""Reading checkpoint files safely: ``weights_only`` pickles, safetensors, one trust policy.

Every file a user can hand g2sd is read by :func:`load_file`; no code path unpickles
arbitrary objects.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable
from typing import Any

import torch

from g2sd.checkpoint._common import CheckpointError, _first_line, _listing

__all__ = ['MMEngineStateStub', 'load_file']


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

