"""Frozen teachers kept outside the student's module tree.

G2SD (Huang et al., CVPR 2023, arXiv 2302.14771) distils from a frozen teacher. A
teacher registered as a submodule would leak into ``state_dict()``, the optimizer,
DDP's gradient buckets, ``init_weights`` and EMA copies; :class:`TeacherHolderMixin`
stores it as a plain attribute instead, moves it with the owner on ``.to()`` /
``.cuda()``, and keeps it in eval mode through ``model.train()``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ['TeacherHolderMixin', 'build_module', 'freeze']

logger = logging.getLogger(__name__)


def build_module(cfg: dict | nn.Module, what: str) -> nn.Module:
    """Build an ``nn.Module`` from a g2sd registry config (``type='g2sd.X'``) or pass it through.

    Args:
        cfg: Config dict with ``type`` or an already built module.
        what: Name used in error messages (e.g. ``'student'``).
    """
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{what} must be an nn.Module or a config dict with "type", got {cfg!r}')
    from g2sd.registry import MODELS

    cfg = dict(cfg)
    cfg.setdefault('_scope_', 'g2sd')
    module = MODELS.build(cfg)
    if not isinstance(module, nn.Module):
        raise TypeError(f'{what} config built {type(module).__name__}, not an nn.Module')
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and switch to eval mode."""
    module.requires_grad_(False)
    return module.eval()


class TeacherHolderMixin(nn.Module):
    """Mixin for modules that own a frozen teacher outside their module tree.

    The teacher is not registered: it is absent from ``state_dict()``,
    ``parameters()`` (so from the optimizer and DDP) and ``modules()``. Device and
    dtype moves of the owner are applied to it, and it stays in ``eval()``.
    """

    _teacher: nn.Module | None = None
    teacher_checkpoint: str | None = None

    def set_teacher(self, teacher: nn.Module | None, checkpoint: str | None = None) -> None:
        """Attach ``teacher`` (frozen, eval) without registering it as a submodule."""
        if teacher is not None:
            freeze(teacher)
        object.__setattr__(self, '_teacher', teacher)
        object.__setattr__(self, 'teacher_checkpoint', checkpoint)

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (not a submodule), or None."""
        return self._teacher

    def _apply(self, fn: Any, recurse: bool = True) -> TeacherHolderMixin:  # noqa: ANN401
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn)
        return self

    def train(self, mode: bool = True) -> TeacherHolderMixin:
        super().train(mode)
        if self._teacher is not None:
            self._teacher.eval()
        return self

    def teacher_checksum(self) -> float:
        """Sum of all teacher parameters in float64 (logged to spot a wrong or empty teacher)."""
        if self._teacher is None:
            return 0.0
        with torch.no_grad():
            return float(sum(p.double().sum() for p in self._teacher.parameters()))
