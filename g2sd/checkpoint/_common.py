"""Shared pieces of the checkpoint package: the error type and message helpers."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

__all__ = ['CheckpointError']

_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and problem."""


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


def _match(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)
