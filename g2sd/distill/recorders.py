"""Recorders: outputs of named sub-modules captured during one distillation pass.

The specific distillation of G2SD (Huang et al., "Generic-to-Specific Distillation of
Masked Autoencoders", CVPR 2023, arXiv 2302.14771) compares intermediate outputs of the
student and the teacher (distillation-head logits, FPN maps, RPN objectness, segmentation
logits). A :class:`Recorder` captures them by wrapping each named module instance's
``forward`` for the duration of :meth:`Recorder.record` (torchdistill / mmrazor's idea,
without forward hooks): a module called through ``__call__`` *and* one whose ``forward()``
is called directly (mmseg calls ``decode_head.forward()``) are both recorded. "Hooks" in
g2sd means runner hooks only (:mod:`g2sd.engine.hooks`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ['Index', 'Recorder', 'select']

Index = int | Sequence[int] | None

_MISSING = object()


def select(record: Any, index: Index) -> Any:
    """Pick ``record[i][j]...`` for ``index=(i, j, ...)`` (an int is one level; None: as is).

    Raises:
        ValueError: ``record`` cannot be indexed with ``index``.
    """
    if index is None:
        return record
    for i in (index,) if isinstance(index, int) else tuple(index):
        try:
            record = record[i]
        except (IndexError, KeyError, TypeError) as err:
            raise ValueError(
                f'cannot index a {type(record).__name__} record with {i!r} (index {index!r})'
            ) from err
    return record


def _recording(forward: Any, store: list[Any]) -> Any:
    """``forward`` that also appends its output to ``store``."""

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        store.append(out)
        return out

    return recording


class Recorder:
    """Record the outputs of named sub-modules, every call, only inside :meth:`record`.

    Args:
        model: Root module.
        paths: Dotted sub-module names (``''`` = the root).
        what: Name used in error messages (``'student'`` / ``'teacher'``).
        wrap_root: Wrap the root's ``forward`` for ``''``; with False, the owner stores the
            root output itself with :meth:`put` (a teacher run by ``teacher_forward``).

    Raises:
        ValueError: A path names no sub-module (the message lists close names).
    """

    def __init__(
        self, model: nn.Module, paths: Sequence[str], what: str, wrap_root: bool = True
    ) -> None:
        self.model = model
        self.paths = tuple(dict.fromkeys(paths))
        self.what = what
        self.wrap_root = wrap_root
        self.records: dict[str, list[Any]] = {}
        for p in self.paths:
            self.module(p)

    def module(self, path: str) -> nn.Module:
        """The sub-module at ``path`` (clear error if absent)."""
        try:
            return self.model.get_submodule(path)
        except AttributeError as err:
            names = [n for n, _ in self.model.named_modules() if n]
            leaf = path.rsplit('.', 1)[-1]
            close = [n for n in names if leaf and leaf in n][:8] or names[:8]
            raise ValueError(
                f'{self.what} ({type(self.model).__name__}) has no module {path!r}; '
                f'modules with a similar name: {close}'
            ) from err

    @contextmanager
    def record(self) -> Iterator[dict[str, list[Any]]]:
        """Wrap the modules' ``forward``, yield the fresh record dict, restore ``forward``."""
        self.records = {p: [] for p in self.paths}
        restore: list[tuple[nn.Module, Any]] = []
        try:
            for p in self.paths:
                if p == '' and not self.wrap_root:
                    continue
                module = self.module(p)
                original = module.__dict__.get('forward', _MISSING)
                object.__setattr__(module, 'forward', _recording(module.forward, self.records[p]))
                restore.append((module, original))
            yield self.records
        finally:
            for module, original in reversed(restore):
                if original is _MISSING:
                    module.__dict__.pop('forward', None)
                else:
                    object.__setattr__(module, 'forward', original)

    def put(self, path: str, value: Any) -> None:
        """Store ``value`` as a call of ``path`` (the root output of a custom forward)."""
        self.records.setdefault(path, []).append(value)

    def silent(self) -> list[str]:
        """Paths whose module did not run during the last recording."""
        return [p for p in self.paths if not self.records.get(p)]

    def get(self, path: str, call: int = 0) -> Any:
        """Output of call ``call`` of the module at ``path`` in the last recording.

        Raises:
            RuntimeError: The module did not run, or ran fewer than ``call + 1`` times.
        """
        calls = self.records.get(path)
        if not calls:
            raise RuntimeError(
                f'{self.what} module {path!r} did not run during the distillation pass'
            )
        try:
            return calls[call]
        except IndexError as err:
            raise RuntimeError(
                f'{self.what} module {path!r} ran {len(calls)} time(s); call {call} requested'
            ) from err

    def clear(self) -> None:
        """Drop the recorded tensors (and their autograd graphs)."""
        self.records = {}
