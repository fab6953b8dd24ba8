"""Saving: the one atomic write of g2sd and plain state-dict export (torch / safetensors)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from g2sd.checkpoint._common import _listing

__all__ = ['atomic_save', 'save_state_dict']

logger = logging.getLogger(__name__)


def atomic_save(
    obj: Any,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    plain_pickle: bool = False,
) -> None:
    """Write ``obj`` to ``path`` atomically: the one atomic write of g2sd.

    The bytes go to a hidden temporary file in the same folder (``.NAME.tmp-PID``), are
    flushed and fsync-ed, and the file is then ``os.replace``-d onto ``path``; a killed or
    failing write (ENOSPC, read-only folder) leaves ``path`` as it was and no temporary
    file behind. Stale temporaries of a killed earlier write are removed first.

    Args:
        obj: A tensor container for ``torch.save``, or for a ``.safetensors`` path a flat
            ``{name: tensor}`` dict (written with safetensors), or with ``plain_pickle``
            plain data such as numpy arrays.
        path: Output file.
        metadata: String metadata of a ``.safetensors`` file.
        plain_pickle: Write ``pickle.dump(obj, protocol=4)`` instead of ``torch.save``
            (detectron2's model-zoo ``.pkl`` format, read back by
            :func:`g2sd.checkpoint.load_file`'s restricted unpickler).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    tmp = os.path.join(folder, f'.{base}.tmp-{os.getpid()}')
    try:
        if path.endswith('.safetensors'):
            _write_safetensors(obj, tmp, dict(metadata or {}))
        else:
            with open(tmp, 'wb') as f:
                if plain_pickle:
                    pickle.dump(obj, f, protocol=4)
                else:
                    torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _write_safetensors(
    tensors: Mapping[str, torch.Tensor], tmp: str, metadata: dict[str, str] | None
) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, tmp, metadata=metadata)
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    # safetensors creates 0600 files; give it the permissions torch.save would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


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
    """Write a state dict atomically (see :func:`atomic_save`).

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
    str_meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta_json.items()}
    if path.endswith('.safetensors'):
        atomic_save(tensors, path, metadata=str_meta)
    else:
        atomic_save({'state_dict': tensors, 'meta': meta_json}, path)
    logger.info('saved %d tensors to %s', len(tensors), path)
