"""Reading checkpoint files safely: ``weights_only`` pickles, safetensors, one trust policy.

Every file a user can hand g2sd is read by :func:`load_file`; no code path unpickles
arbitrary objects.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterable
from typing import IO, Any

import torch

from g2sd.checkpoint._common import CheckpointError, _first_line, _listing

__all__ = ['MMEngineStateStub', 'PLAIN_PICKLE_GLOBALS', 'load_file', 'load_plain_pickle']


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


# Globals that weights_only admits by itself besides torch.* (see torch/_weights_only_unpickler).
_WEIGHTS_ONLY_BUILTINS = frozenset(
    {'builtins.set', 'builtins.frozenset', 'builtins.bytearray', 'builtins.complex'}
)


def _global_name(obj: Any) -> str:
    if isinstance(obj, tuple):
        return obj[1]
    return f'{obj.__module__}.{obj.__qualname__}'


def _pickle_globals(stream: IO[bytes], limit: int) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL / INST in the pickles of ``stream``.

    Reads opcodes with :mod:`pickletools` and never executes anything. A legacy (non-zip)
    torch file is several pickles in a row (magic number, protocol, sys info, the object,
    the storage keys) followed by raw storage bytes: ``limit`` pickles are scanned, and
    scanning stops early at one that does not parse.
    """
    names: list[str] = []
    for _ in range(limit):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ('GLOBAL', 'INST'):
                    module, _, attr = str(arg).partition(' ')
                    module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # __builtin__
                    names.append(f'{module}.{attr}')
                elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                    names.append(f'{strings[-2]}.{strings[-1]}')
                elif isinstance(arg, str) and 'UNICODE' in op.name:
                    strings.append(arg)
                elif op.name == 'MEMOIZE' and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ('BINPUT', 'LONG_BINPUT', 'PUT') and strings:
                    memo[int(arg)] = strings[-1]
                elif op.name in ('BINGET', 'LONG_BINGET', 'GET') and isinstance(
                    memo.get(int(arg)), str
                ):
                    strings.append(memo[int(arg)])
        except Exception:  # end of the pickles (raw storage bytes) or garbage
            break
    return list(dict.fromkeys(names))


def _scan_globals(path: str) -> list[str]:
    """Globals named in the pickles of a torch file (zip or legacy), without unpickling."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names: list[str] = []
                for member in zf.namelist():
                    if member.endswith('.pkl'):
                        with zf.open(member) as f:
                            names += _pickle_globals(io.BytesIO(f.read()), 1)
                return list(dict.fromkeys(names))
        with open(path, 'rb') as f:  # magic number, protocol, sys info, object, storage keys
            return _pickle_globals(f, 5)
    except (OSError, zipfile.BadZipFile):
        return []


def _unsafe_globals(path: str, error: BaseException, allowed: Iterable[Any]) -> list[str]:
    """Globals of a pickle that are outside ``allowed`` (empty if it cannot tell).

    Zip files: torch's own scan (``get_unsafe_globals_in_checkpoint``); legacy (non-zip)
    files: the opcodes (:func:`_scan_globals`); both complete the global torch's error names.
    """
    ok = {_global_name(a) for a in allowed}
    names = re.findall(
        r'GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)', str(error)
    )
    try:
        names += list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) file, truncated, ...
        names += [n for n in _scan_globals(path) if not _torch_allows(n)]
    # torch names builtins without their module ('eval'): keep the qualified form only.
    qualified = [n for n in names if '.' in n]
    names = [n for n in names if '.' in n or not any(q.endswith('.' + n) for q in qualified)]
    return [n for n in dict.fromkeys(names) if n not in ok]


def _torch_allows(name: str) -> bool:
    """Globals ``weights_only`` admits on its own (torch tensors, storages, OrderedDict...)."""
    if name.startswith(('torch.', 'collections.OrderedDict', '_codecs.encode')):
        return True
    return name in _WEIGHTS_ONLY_BUILTINS


def _torch_message(e: BaseException) -> str:
    """torch's error without its advice to retry with the unsafe (code-running) loader."""
    text = str(e)
    wo = re.search(r'WeightsUnpickler error:\s*([^\n]+)', text)
    if wo:
        text = wo.group(1)
    line = _first_line(RuntimeError(text))
    if 'weights_only' in line or 'Weights only load failed' in line:
        line = 'refused by the weights_only unpickler'
    return line


def _is_mmengine_state(names: Iterable[str]) -> bool:
    return all(
        n.startswith(('numpy.', 'mmengine.logging.history_buffer.')) or n == 'builtins.getattr'
        for n in names
    )


def _plain_pickle_globals() -> dict[str, Any]:
    """``module.name`` -> object admitted in plain (non-torch) pickles of numpy arrays.

    detectron2's model-zoo ``.pkl`` files (``{'model': {name: numpy.ndarray}, '__author__':
    ..., 'matching_heuristics': ...}``, read by detectron2 with ``pickle.load(f,
    encoding='latin1')``) need numpy's array reconstruction only: ``_reconstruct`` (under
    ``numpy.core`` before numpy 2, ``numpy._core`` since), ``numpy.ndarray``,
    ``numpy.dtype`` and, for ``bytes`` written at pickle protocol 2, ``_codecs.encode``
    (the same one ``torch.load(weights_only=True)`` admits). Everything else is refused.
    """
    import codecs

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    return {
        'numpy.core.multiarray._reconstruct': multiarray._reconstruct,
        'numpy._core.multiarray._reconstruct': multiarray._reconstruct,
        'numpy.ndarray': np.ndarray,
        'numpy.dtype': np.dtype,
        '_codecs.encode': codecs.encode,
    }


#: Globals a plain ``.pkl`` checkpoint may name (numpy arrays and ``_codecs.encode``).
PLAIN_PICKLE_GLOBALS = (
    'numpy.core.multiarray._reconstruct',
    'numpy._core.multiarray._reconstruct',
    'numpy.ndarray',
    'numpy.dtype',
    '_codecs.encode',
)


class _RefusedGlobal:
    """Inert stand-in for a refused global: calling, building or setting state does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`PLAIN_PICKLE_GLOBALS` (plain containers otherwise).

    Any other global is recorded in ``refused`` and replaced by the inert
    :class:`_RefusedGlobal`, so every offending name is collected and nothing from the file
    runs; the caller refuses the file when ``refused`` is not empty.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admitted = _plain_pickle_globals()
        self.refused: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        full = f'{module}.{name}'
        if full in self.admitted:
            return self.admitted[full]
        self.refused.append(full)
        return _RefusedGlobal


def _numpy_to_torch(obj: Any, path: str) -> Any:
    """Numpy arrays in nested dicts / lists / tuples -> CPU tensors (other leaves kept)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in 'biufc':
            raise CheckpointError(
                f'{path!r}: numpy array of dtype {obj.dtype} cannot be a tensor (expected numbers)'
            )
        return torch.from_numpy(np.array(obj, copy=True, order='C'))
    if isinstance(obj, dict):
        return {k: _numpy_to_torch(v, path) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpy_to_torch(v, path) for v in obj)
    return obj


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """Read a plain pickle of numpy arrays (detectron2 ``.pkl``) safely; arrays -> tensors.

    The unpickler resolves only :data:`PLAIN_PICKLE_GLOBALS` (``encoding='latin1'`` for
    Python-2 pickles, as detectron2 reads them); any other global is replaced by an inert
    stand-in and recorded (the trust policy of :class:`MMEngineStateStub`: nothing from the
    file runs), and a file naming any is refused with all of them named. Numpy arrays
    are converted to CPU tensors, so ``{'model': {name: ndarray}}`` becomes
    ``{'model': {name: tensor}}``.

    Args:
        path: The ``.pkl`` file.

    Returns:
        The unpickled object with numpy arrays replaced by tensors.

    Raises:
        CheckpointError: Missing / unreadable file or a global that is not admitted.
    """
    path = os.fspath(path)
    unpickler: _NumpyOnlyUnpickler | None = None
    try:
        with open(path, 'rb') as f:
            unpickler = _NumpyOnlyUnpickler(f, encoding='latin1')
            obj = unpickler.load()
        error: BaseException | None = None
    except Exception as e:  # corrupt bytes, or an admitted callable fed a refused stand-in
        error = e
    refused = list(dict.fromkeys(unpickler.refused)) if unpickler is not None else []
    if refused:
        raise CheckpointError(
            f'{path!r} needs pickle globals that are not on the safe list: '
            f'{_listing(sorted(refused))}; refused for safety (a plain .pkl may hold numpy '
            'arrays and plain containers only; nothing from the file was run)'
        ) from error
    if error is not None:
        raise CheckpointError(
            f'{path!r} is not a readable pickle (truncated or corrupt?): '
            f'{type(error).__name__}: {_first_line(error)}'
        ) from error
    return _numpy_to_torch(obj, path)


def load_file(path: str | os.PathLike, *, trusted: bool = False) -> Any:
    """Read a checkpoint file safely on the CPU.

    Args:
        path: ``.safetensors`` (read with safetensors), a plain ``.pkl`` pickle of numpy
            arrays (detectron2 model zoo; :func:`load_plain_pickle`, arrays become tensors)
            or a PyTorch file (any other suffix, or a ``.pkl`` that is a torch zip file;
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
    if path.endswith('.pkl') and not zipfile.is_zipfile(path):
        obj = load_plain_pickle(path)
        if not (isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER):
            return obj
        # else a legacy (non-zip) torch file named .pkl (its first pickle is torch's magic
        # number): read by torch below.
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
                f'{_listing(sorted(unsafe))}; refused for safety (g2sd loads with '
                'weights_only=True and never unpickles arbitrary objects)'
            )
            if not trusted and _is_mmengine_state(unsafe):
                msg += (
                    '. This looks like an mmengine training checkpoint: if you made it, pass '
                    'trusted=True (numpy data; HistoryBuffer read as an inert stub) or export the '
                    'weights first with tools/convert/extract_student.py'
                )
            raise CheckpointError(msg) from e
        # weights_only refused an operation (not a global): name it; else the bytes are bad.
        wo = re.search(r'WeightsUnpickler error:\s*((?:Can only|Trying to)[^\n]*)', str(e))
        if wo:
            detail = _first_line(RuntimeError(wo.group(1)))
            raise CheckpointError(
                f'{path!r} cannot be read safely: {detail}; refused for safety (g2sd never '
                'unpickles arbitrary objects)'
            ) from e
        raise CheckpointError(
            f'{path!r} is not a readable PyTorch checkpoint (truncated or corrupt?): '
            f'{type(e).__name__}: {_torch_message(e)}'
        ) from e
