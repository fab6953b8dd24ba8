"""Training loops that resume exactly: RNG states restored after the consumed batches are skipped.

Every G2SD stage (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders",
CVPR 2023, arXiv 2302.14771) draws random masks and crops, so a resumed run only continues
the uninterrupted one if the random number generators and the data order continue too.
:class:`G2SDRunner` (``g2sd/engine/runner.py``) saves the torch / numpy / python (and CUDA)
RNG states of every rank in each checkpoint; these loops put them back at the right moment:

- ``g2sd.EpochBasedTrainLoop``: on a mid-epoch checkpoint (``CheckpointHook(by_epoch=False)``)
  the batches of the current epoch that were already trained on are skipped (mmengine
  re-runs the epoch from its first batch). The skipped batches are fetched through the
  dataloader from the RNG state the epoch started with, so the sampler, the worker seeds
  and the augmentations are those of the uninterrupted run; then the RNG state of the
  checkpoint is restored.
- ``g2sd.IterBasedTrainLoop``: mmengine's skipping of the consumed iterations, followed by
  the RNG restore.

Both run the validation loop under a forked RNG (validation draws no random numbers from
the training stream), so a run resumed after an epoch-end checkpoint sees the same random
stream as one that validated in between.

:class:`G2SDRunner` builds these loops for ``EpochBasedTrainLoop`` / ``IterBasedTrainLoop``
configs (with or without ``type``); ``type='mmengine.EpochBasedTrainLoop'`` keeps mmengine's.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop as _MMEpochLoop
from mmengine.runner import IterBasedTrainLoop as _MMIterLoop

from g2sd.registry import LOOPS

__all__ = ['EpochBasedTrainLoop', 'IterBasedTrainLoop', 'get_rng_state', 'set_rng_state']


def get_rng_state() -> dict[str, Any]:
    """The torch / numpy / python (and CUDA) RNG states of this process, as plain data.

    Returns:
        ``dict(torch=ByteTensor, numpy=dict(...), python=tuple, cuda=list[ByteTensor])``;
        readable with ``torch.load(weights_only=True)`` (no numpy objects).
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = dict(
        torch=torch.get_rng_state(),
        numpy=dict(
            kind=str(kind),
            key=torch.from_numpy(np.asarray(key, dtype=np.int64)),
            pos=int(pos),
            has_gauss=int(has_gauss),
            gauss=float(gauss),
        ),
        python=random.getstate(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states written by :func:`get_rng_state` (CUDA only for the same device count).

    Args:
        state: One rank's states.
    """
    torch.set_rng_state(state['torch'].cpu())
    npst = state['numpy']
    np.random.set_state(
        (
            npst['kind'],
            npst['key'].numpy().astype(np.uint32),
            int(npst['pos']),
            int(npst['has_gauss']),
            float(npst['gauss']),
        )
    )
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get('cuda')
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            print_log(
                f'the checkpoint holds CUDA RNG states of {len(cuda)} devices, this process '
                f'sees {torch.cuda.device_count()}: CUDA RNG not restored',
                logger='current',
                level=logging.WARNING,
            )


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Run the body without changing this process's RNG states."""
    saved = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


class _ResumableMixin:
    """RNG states handed over by ``G2SDRunner.resume`` and applied after the skip."""

    resume_rng: dict[str, Any] | None = None
    resume_epoch_rng: dict[str, Any] | None = None
    epoch_rng: dict[str, Any] | None = None  # state at the start of the running epoch

    def _run_val(self) -> None:
        with forked_rng():
            self.runner.val_loop.run()  # type: ignore[attr-defined]


@LOOPS.register_module(name='EpochBasedTrainLoop')
class EpochBasedTrainLoop(_ResumableMixin, _MMEpochLoop):
    """mmengine's ``EpochBasedTrainLoop`` that resumes mid-epoch checkpoints exactly.

    Same arguments as mmengine's loop (``max_epochs``, ``val_begin``, ``val_interval``,
    ``dynamic_intervals``); see the module docstring for what differs.
    """

    def run(self) -> torch.nn.Module:
        """Launch training (mmengine's loop; validation under a forked RNG)."""
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if (
                self.runner.val_loop is not None
                and self._epoch >= self.val_begin
                and (self._epoch % self.val_interval == 0 or self._epoch == self._max_epochs)
            ):
                self._run_val()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self) -> None:
        """Iterate one epoch, skipping the batches a mid-epoch checkpoint already trained on."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        skip = self._iter - self._epoch * len(self.dataloader)
        if skip < 0 or skip >= len(self.dataloader):
            skip = 0  # not a position inside this epoch: nothing to skip
        if skip and self.resume_epoch_rng is None:
            print_log(
                f'resuming at batch {skip} of epoch {self._epoch + 1}: the checkpoint holds '
                'no RNG state of the epoch start, so the skipped batches may differ from '
                'those trained on',
                logger='current',
                level=logging.WARNING,
            )
        if skip and self.resume_epoch_rng is not None:
            set_rng_state(self.resume_epoch_rng)
        elif not skip and self.resume_rng is not None:
            set_rng_state(self.resume_rng)
            self.resume_rng = None
        self.epoch_rng = get_rng_state()
        data_iter = iter(self.dataloader)
        if skip:
            print_log(
                f'mid-epoch resume: skipping the {skip} batches of epoch {self._epoch + 1} '
                'already trained on',
                logger='current',
            )
            for _ in range(skip):
                next(data_iter)
            if self.resume_rng is not None:
                set_rng_state(self.resume_rng)
        self.resume_rng = self.resume_epoch_rng = None
        for idx, data_batch in enumerate(data_iter, start=skip):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


@LOOPS.register_module(name='IterBasedTrainLoop')
class IterBasedTrainLoop(_ResumableMixin, _MMIterLoop):
    """mmengine's ``IterBasedTrainLoop`` with the RNG restored after the consumed batches.

    Same arguments as mmengine's loop (``max_iters``, ``val_begin``, ``val_interval``,
    ``dynamic_intervals``).
    """

    def run(self) -> torch.nn.Module:
        """Launch training (mmengine's loop; RNG restored after the skip; forked-RNG val)."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            print_log(
                f'Advance dataloader {self._iter} steps to skip data that has already been trained',
                logger='current',
                level=logging.WARNING,
            )
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        if self.resume_rng is not None:
            set_rng_state(self.resume_rng)
        self.resume_rng = self.resume_epoch_rng = None
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (
                self.runner.val_loop is not None
                and self._iter >= self.val_begin
                and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)
            ):
                self._run_val()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model
