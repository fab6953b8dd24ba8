"""One learning-rate schedule for every G2SD recipe: linear warm-up, then half-cosine decay.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) trains every epoch-based stage (generic distillation, MAE / D-MAE / TinyMIM
pre-training, classification SD) with MAE's ``util/lr_sched.py`` shape: a linear warm-up of a
few epochs, then a cosine to ``min_lr``, updated per iteration. :class:`WarmupCosineLR` is
that schedule as ONE mmengine parameter scheduler whose end defaults to the run's length: the
runner fills in ``end = train_cfg.max_epochs`` (``Runner._build_param_scheduler``) and passes
``epoch_length``, so ``--cfg-options train_cfg.max_epochs=N`` alone rescales the cosine.

Its values equal, step for step, mmengine's pair ``LinearLR(start_factor, begin=0,
end=warmup) + CosineAnnealingLR(T_max=end - warmup, begin=warmup, end=end)`` (both
``convert_to_iter_based=True``): the same chainable formulas in the same order. Config::

    param_scheduler = dict(
        type='g2sd.WarmupCosineLR',
        warmup=10,  # epochs (the scheduler's unit), converted to iterations
        warmup_start_factor=1e-4,
        eta_min=2.5e-6,
        convert_to_iter_based=True,
    )
"""

from __future__ import annotations

import logging
import math

from mmengine.logging import print_log
from mmengine.optim import BaseOptimWrapper
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from torch.optim import Optimizer

from g2sd.registry import PARAM_SCHEDULERS

__all__ = ['WarmupCosineLR']


@PARAM_SCHEDULERS.register_module()
class WarmupCosineLR(_ParamScheduler):
    """Linear lr warm-up over ``warmup`` steps, then cosine annealing to ``eta_min`` at ``end``.

    With k the step counted from ``begin``, w = ``warmup``, T = ``end - begin - w``, base the
    group's initial lr and f = ``warmup_start_factor``, the lr is (chainable forms of
    mmengine's ``LinearLR`` and ``CosineAnnealingLR``, whose closed forms these are)::

        k <  w:  base * (f + (1 - f) * k / (w - 1))                  (reaches base at k = w - 1)
        k >= w:  eta_min + (base - eta_min) * (1 + cos(pi * (k - w) / T)) / 2

    Steps are epochs when ``by_epoch`` and iterations after ``convert_to_iter_based=True``
    (``warmup``, ``begin`` and ``end`` are then multiplied by the epoch length). ``end``
    defaults to ``train_cfg.max_epochs``: leave it out of configs. A run not longer than the
    warm-up only warms up (a warning says so).

    Args:
        optimizer: Wrapped optimizer (given by the runner).
        warmup: Length of the linear warm-up in steps (0: cosine only).
        warmup_start_factor: Factor of the base lr at the first step, in (0, 1].
        eta_min: Final lr (same for every param group). Default 0 unless ``eta_min_ratio``.
        eta_min_ratio: Final lr as a fraction of each group's base lr (with layer decay the
            official MAE/G2SD ``min_lr`` scales with the group). Exclusive with ``eta_min``.
        begin: First step of the schedule.
        end: Step at which the schedule ends (the runner's max epochs / iterations by default).
        last_step: Index of the last step (-1: not started).
        by_epoch: Whether steps are epochs.
        verbose: Log every update.
    """

    def __init__(
        self,
        optimizer: Optimizer | BaseOptimWrapper,
        warmup: int = 0,
        warmup_start_factor: float = 1e-3,
        eta_min: float | None = None,
        eta_min_ratio: float | None = None,
        begin: int = 0,
        end: int = INF,
        last_step: int = -1,
        by_epoch: bool = True,
        verbose: bool = False,
    ) -> None:
        if end == INF:
            raise ValueError(
                'WarmupCosineLR needs an end: the runner sets it to train_cfg.max_epochs '
                '(max_iters when by_epoch=False) once the train loop is built; pass end= when '
                'building it by hand'
            )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f'warmup must be an int >= 0 (steps), got {warmup!r}')
        if not 0 < warmup_start_factor <= 1:
            raise ValueError(f'warmup_start_factor must be in (0, 1], got {warmup_start_factor!r}')
        if eta_min is not None and eta_min_ratio is not None:
            raise ValueError(
                f'give eta_min or eta_min_ratio, not both (got {eta_min!r} and {eta_min_ratio!r})'
            )
        if eta_min is None and eta_min_ratio is None:
            eta_min = 0.0
        self.warmup = warmup
        self.warmup_start_factor = float(warmup_start_factor)
        self.eta_min = eta_min
        self.eta_min_ratio = eta_min_ratio
        #: Length of the cosine phase in steps (T).
        self.T_max = end - begin - warmup
        if self.T_max <= 0:
            print_log(
                f'WarmupCosineLR: the schedule ({end - begin} steps) is not longer than its '
                f'warm-up ({warmup} steps): the lr only warms up, no cosine decay',
                logger='current',
                level=logging.WARNING,
            )
        super().__init__(
            optimizer,
            param_name='lr',
            begin=begin,
            end=end,
            last_step=last_step,
            by_epoch=by_epoch,
            verbose=verbose,
        )

    @classmethod
    def build_iter_from_epoch(
        cls,
        *args,
        warmup: int = 0,
        begin: int = 0,
        end: int = INF,
        by_epoch: bool = True,
        epoch_length: int | None = None,
        **kwargs,
    ) -> WarmupCosineLR:
        """Iteration-based instance from epoch-based arguments (``convert_to_iter_based``)."""
        if not by_epoch:
            raise ValueError('convert_to_iter_based needs an epoch-based config (by_epoch=True)')
        if not isinstance(epoch_length, int) or epoch_length < 1:
            raise ValueError(f'epoch_length must be an int >= 1, got {epoch_length!r}')
        return cls(
            *args,
            warmup=int(warmup * epoch_length),
            begin=int(begin * epoch_length),
            end=int(end * epoch_length) if end != INF else INF,
            by_epoch=False,
            **kwargs,
        )

    def _eta_min(self, base_value: float) -> float:
        return self.eta_min if self.eta_min_ratio is None else base_value * self.eta_min_ratio

    def _get_value(self) -> list[float]:
        """Chainable form: the next lr of each group from its current one."""
        groups = self.optimizer.param_groups
        k, w, f = self.last_step, self.warmup, self.warmup_start_factor
        if k < w:  # mmengine LinearLR, end_factor 1, total_iters w - 1
            if k == 0:
                return [group[self.param_name] * f for group in groups]
            return [
                group[self.param_name] * (1.0 + (1.0 - f) / ((w - 1) * f + (k - 1) * (1.0 - f)))
                for group in groups
            ]
        c = k - w  # mmengine CosineAnnealingLR, counted from the end of the warm-up
        if c == 0:
            return [group[self.param_name] for group in groups]
        ratio = (1 + math.cos(math.pi * c / self.T_max)) / (
            1 + math.cos(math.pi * (c - 1) / self.T_max)
        )
        return [
            ratio * (group[self.param_name] - self._eta_min(base)) + self._eta_min(base)
            for base, group in zip(self.base_values, groups)
        ]
