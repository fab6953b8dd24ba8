"""Runner hooks of the distillation runs: scheduling and checks only (no loss is computed here).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) distils from a frozen teacher that lives outside the trained module tree;
every distillation loss is computed inside the model (:mod:`g2sd.distill`). These hooks:

* :class:`TeacherCheckHook` verifies the frozen-teacher contract before training starts and
  that the teacher is unchanged at the end (:func:`teacher_checksum`, logged).
* :class:`SaveStudentHook` exports the plain student encoder (timm / MAE keys, torch +
  safetensors) when the run finishes, so users directly get a backbone for mmdet / mmseg /
  timm.
* :class:`DistillWeightHook` sets ``model.distill_weight_scale`` (warm-up / decay of the
  distillation weight, by iteration or epoch; the paper's detection run warms it up linearly
  over 500 iterations).
* :class:`StopDistillHook` sets ``model.distillation_stopped`` from an epoch or iteration on
  (mmrazor semantics): the teacher no longer runs and only the student's losses remain.
* :class:`TeacherValHook` evaluates the frozen teacher once on the validation set before
  training and logs its metrics under ``teacher/`` (without calling other hooks, so
  ``CheckpointHook(save_best=...)`` never sees them).

Ordering: ``TeacherCheckHook`` runs ``before_train``, after mmengine has built the optimiser
and loaded / resumed checkpoints; the ``SaveStudentHook`` export runs ``after_run``, after
``CheckpointHook`` has written the final checkpoint (and after ``EMAHook`` has swapped
weights back, i.e. it exports the raw, not the averaged, student). The scheduling hooks
unwrap DDP (``is_model_wrapper``), raise ``TypeError`` before training if the model does not
have the attribute they set, and recompute their values from the restored ``runner.iter`` /
``runner.epoch`` on resume.
"""

from __future__ import annotations

import math
import os.path as osp
from typing import Any, Literal

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from g2sd.checkpoint import atomic_save
from g2sd.registry import HOOKS

__all__ = [
    'DistillWeightHook',
    'SaveStudentHook',
    'StopDistillHook',
    'TeacherCheckHook',
    'TeacherValHook',
    'distill_weight_factor',
    'teacher_checksum',
    'unwrap_algorithm',
]


def unwrap_algorithm(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(base model without DDP wrapper, its ``.algorithm`` (deprecated ``g2sd.PretrainModel``)
    or the base model itself)."""
    base = model.module if is_model_wrapper(model) else model
    return base, getattr(base, 'algorithm', base)


def teacher_checksum(teacher: nn.Module) -> tuple[float, int]:
    """(float64 sum of all teacher parameters, their number): spots a wrong or changed teacher."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for p in teacher.parameters():
            total = total + p.detach().double().sum().cpu()
            count += p.numel()
    return float(total), count


@HOOKS.register_module()
class TeacherCheckHook(Hook):
    """Check the frozen-teacher contract before training; log path and checksum.

    Before training: the teacher (``model.teacher``, DDP unwrapped) has no
    parameter with ``requires_grad``, every sub-module is in eval mode, and none of its
    modules / tensors is part of the trained model (``model.modules()``,
    ``model.state_dict()``). Logs ``teacher_checkpoint`` and a checksum (float64 sum of
    all parameters). After training the checksum must be unchanged.

    Args:
        require_teacher: Raise if the model has no teacher (e.g. a distillation
            config whose teacher was not built). Plain MAE pre-training has none.
        check_after_train: Re-compute the checksum after training.

    Raises:
        RuntimeError: A check fails.
    """

    priority = 'VERY_HIGH'

    def __init__(self, require_teacher: bool = False, check_after_train: bool = True) -> None:
        self.require_teacher = require_teacher
        self.check_after_train = check_after_train
        self._checksum: float | None = None

    def before_train(self, runner: Any) -> None:
        base, algorithm = unwrap_algorithm(runner.model)
        teacher = getattr(algorithm, 'teacher', None)
        if teacher is None:
            if self.require_teacher:
                raise RuntimeError(f'{type(algorithm).__name__} has no teacher to distil from')
            runner.logger.info('TeacherCheckHook: no teacher (plain pre-training)')
            return
        if not isinstance(teacher, nn.Module):
            raise RuntimeError(f'teacher must be an nn.Module, got {type(teacher)}')
        trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(
                f'the teacher must be frozen but {len(trainable)} parameters require grad, '
                f'e.g. {trainable[:3]}'
            )
        training = [n or '<root>' for n, m in teacher.named_modules() if m.training]
        if training:
            raise RuntimeError(f'the teacher must be in eval mode; training: {training[:3]}')
        if any(m is teacher for m in base.modules()):
            raise RuntimeError(
                'the teacher is a sub-module of the trained model: it would enter '
                'state_dict, the optimiser, DDP and EMA copies. Keep it outside the module tree.'
            )
        model_ptrs = {
            t.data_ptr() for t in base.state_dict().values() if torch.is_tensor(t) and t.numel()
        }
        shared = [
            n
            for n, t in list(teacher.named_parameters()) + list(teacher.named_buffers())
            if t.numel() and t.data_ptr() in model_ptrs
        ]
        if shared:
            raise RuntimeError(f'teacher tensors appear in model.state_dict(): {shared[:3]}')
        self._checksum, count = teacher_checksum(teacher)
        ckpt = getattr(algorithm, 'teacher_checkpoint', None)
        runner.logger.info(
            f'TeacherCheckHook: teacher {type(teacher).__name__} frozen, eval, outside the '
            f'model; checkpoint={ckpt!r}; {count} params; checksum(float64 sum)='
            f'{self._checksum:.10e}'
        )

    def after_train(self, runner: Any) -> None:
        if not self.check_after_train or self._checksum is None:
            return
        _, algorithm = unwrap_algorithm(runner.model)
        now, _ = teacher_checksum(algorithm.teacher)
        if now != self._checksum:
            raise RuntimeError(
                f'the teacher changed during training: checksum {self._checksum!r} -> {now!r}'
            )
        runner.logger.info('TeacherCheckHook: teacher unchanged after training')


@HOOKS.register_module()
class SaveStudentHook(Hook):
    """Export the plain student encoder when the run ends (rank 0).

    Writes ``export_student()`` of the model (or of its ``algorithm``) atomically to
    ``<work_dir>/<out>`` with ``torch.save`` (a flat ``{name: tensor}`` dict, loadable with
    ``weights_only=True``) and, with ``safetensors=True``, next to it as
    ``<stem>.safetensors``.

    Args:
        out: File name (relative to the work dir) or absolute path.
        safetensors: Also write a ``.safetensors`` copy.
    """

    priority = 'LOWEST'

    def __init__(self, out: str = 'student.pth', safetensors: bool = True) -> None:
        if not out or not isinstance(out, str):
            raise ValueError(f'out must be a file name, got {out!r}')
        self.out = out
        self.safetensors = safetensors

    @master_only
    def after_run(self, runner: Any) -> None:
        base, algorithm = unwrap_algorithm(runner.model)
        owner = base if callable(getattr(base, 'export_student', None)) else algorithm
        export = getattr(owner, 'export_student', None)
        if not callable(export):
            raise RuntimeError(f'{type(owner).__name__} has no export_student()')
        state = {k: v.detach().cpu().contiguous().clone() for k, v in export().items()}
        path = self.out if osp.isabs(self.out) else osp.join(runner.work_dir, self.out)
        atomic_save(state, path)
        paths = [path]
        if self.safetensors:
            st_path = osp.splitext(path)[0] + '.safetensors'
            atomic_save(state, st_path, metadata={'format': 'pt', 'producer': 'g2sd'})
            paths.append(st_path)
        runner.logger.info(f'SaveStudentHook: {len(state)} tensors -> {", ".join(paths)}')


def _base(runner: Any) -> nn.Module:
    model = runner.model
    return model.module if is_model_wrapper(model) else model


def _require(model: nn.Module, attr: str, hook: str) -> None:
    if not hasattr(model, attr):
        raise TypeError(
            f'{hook} needs a distillation model with a {attr!r} attribute '
            f'(type=g2sd.DistillModel), got {type(model).__name__}'
        )


def _ramp(p: float, kind: str) -> float:
    """0 -> 1 as p goes 0 -> 1, linear or half-cosine."""
    p = min(max(p, 0.0), 1.0)
    return p if kind == 'linear' else 0.5 * (1.0 - math.cos(math.pi * p))


def distill_weight_factor(
    t: int,
    warmup: int = 0,
    warmup_type: Literal['linear', 'cosine'] = 'linear',
    start_factor: float = 0.0,
    decay_begin: int | None = None,
    decay_end: int | None = None,
    decay_type: Literal['linear', 'cosine'] = 'linear',
    end_factor: float = 0.0,
) -> float:
    """Distillation-weight factor at step ``t`` (iterations or epochs done so far).

    ``t < warmup``: ramps ``start_factor -> 1`` (``t = 0`` gives ``start_factor``; G2SD det:
    ``min(1, t / 500)``). Between ``decay_begin`` and ``decay_end``: ramps ``1 -> end_factor``,
    and stays at ``end_factor`` afterwards. Otherwise 1.
    """
    f = 1.0
    if warmup > 0 and t < warmup:
        f = start_factor + (1.0 - start_factor) * _ramp(t / warmup, warmup_type)
    if decay_begin is not None and t >= decay_begin:
        end = decay_begin + 1 if decay_end is None else decay_end
        f = f * (
            1.0 + (end_factor - 1.0) * _ramp((t - decay_begin) / (end - decay_begin), decay_type)
        )
    return float(f)


@HOOKS.register_module()
class DistillWeightHook(Hook):
    """Warm-up / decay of ``model.distill_weight_scale``.

    The factor multiplies every ``distill.loss_*`` of :class:`g2sd.DistillModel`; see
    :func:`distill_weight_factor`. It is set before each iteration (``by_epoch=False``,
    ``t = runner.iter``) or each epoch (``t = runner.epoch``) and logged as
    ``train/distill_weight_scale``.

    Args:
        warmup: Length of the warm-up (G2SD detection: 500 iterations); 0 disables it.
        by_epoch: Count epochs instead of iterations.
        warmup_type: ``'linear'`` or ``'cosine'``.
        start_factor: Factor at ``t = 0``, in [0, 1].
        decay_begin: Start of the decay; None disables it.
        decay_end: End of the decay (> ``decay_begin``).
        decay_type: ``'linear'`` or ``'cosine'``.
        end_factor: Factor from ``decay_end`` on, >= 0.
    """

    priority = 'NORMAL'

    def __init__(
        self,
        warmup: int = 0,
        by_epoch: bool = False,
        warmup_type: Literal['linear', 'cosine'] = 'linear',
        start_factor: float = 0.0,
        decay_begin: int | None = None,
        decay_end: int | None = None,
        decay_type: Literal['linear', 'cosine'] = 'linear',
        end_factor: float = 0.0,
    ) -> None:
        if warmup < 0:
            raise ValueError(f'warmup must be >= 0, got {warmup!r}')
        for name, kind in (('warmup_type', warmup_type), ('decay_type', decay_type)):
            if kind not in ('linear', 'cosine'):
                raise ValueError(f"{name} must be 'linear' or 'cosine', got {kind!r}")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f'start_factor must be in [0, 1], got {start_factor!r}')
        if end_factor < 0:
            raise ValueError(f'end_factor must be >= 0, got {end_factor!r}')
        if decay_begin is not None:
            if decay_begin < warmup:
                raise ValueError(f'decay_begin {decay_begin} is inside the warm-up ({warmup})')
            if decay_end is not None and decay_end <= decay_begin:
                raise ValueError(f'decay_end {decay_end} must be > decay_begin {decay_begin}')
        elif decay_end is not None:
            raise ValueError('decay_end needs decay_begin')
        self.by_epoch = by_epoch
        self.kwargs = dict(
            warmup=warmup,
            warmup_type=warmup_type,
            start_factor=start_factor,
            decay_begin=decay_begin,
            decay_end=decay_end,
            decay_type=decay_type,
            end_factor=end_factor,
        )

    def _set(self, runner: Any, t: int) -> None:
        factor = distill_weight_factor(t, **self.kwargs)
        _base(runner).distill_weight_scale = factor
        runner.message_hub.update_scalar('train/distill_weight_scale', factor)

    def before_train(self, runner: Any) -> None:
        _require(_base(runner), 'distill_weight_scale', 'DistillWeightHook')
        self._set(runner, runner.epoch if self.by_epoch else runner.iter)

    def before_train_epoch(self, runner: Any) -> None:
        if self.by_epoch:
            self._set(runner, runner.epoch)

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if not self.by_epoch:
            self._set(runner, runner.iter)


@HOOKS.register_module()
class StopDistillHook(Hook):
    """Stop distillation from an epoch or an iteration on (``model.distillation_stopped``).

    Once stopped, distillation-only parameters (the distillation head, adapters) get no
    gradient: under DDP set ``find_unused_parameters = True`` in the config.

    Args:
        stop_epoch: First epoch (0-based, ``runner.epoch``) trained without distillation.
        stop_iter: First iteration (``runner.iter``) trained without distillation.
            Give exactly one of the two.
    """

    priority = 'LOW'

    def __init__(self, stop_epoch: int | None = None, stop_iter: int | None = None) -> None:
        if (stop_epoch is None) == (stop_iter is None):
            raise ValueError(
                f'give exactly one of stop_epoch and stop_iter, got {stop_epoch!r}, {stop_iter!r}'
            )
        value = stop_epoch if stop_epoch is not None else stop_iter
        if not isinstance(value, int) or value < 0:
            raise ValueError(f'the stop point must be an int >= 0, got {value!r}')
        self.stop_epoch = stop_epoch
        self.stop_iter = stop_iter

    def _check(self, runner: Any) -> None:
        model = _base(runner)
        if model.distillation_stopped:
            return
        if (self.stop_epoch is not None and runner.epoch >= self.stop_epoch) or (
            self.stop_iter is not None and runner.iter >= self.stop_iter
        ):
            model.distillation_stopped = True
            runner.logger.info(
                f'StopDistillHook: distillation stopped at epoch {runner.epoch}, iter {runner.iter}'
            )

    def before_train(self, runner: Any) -> None:
        _require(_base(runner), 'distillation_stopped', 'StopDistillHook')
        self._check(runner)

    def before_train_epoch(self, runner: Any) -> None:
        self._check(runner)

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if self.stop_iter is not None:
            self._check(runner)


@HOOKS.register_module()
class TeacherValHook(Hook):
    """Evaluate the frozen teacher on the validation set before training.

    Runs ``val_step`` over ``runner.val_loop.dataloader`` with
    ``model.predict_with_teacher = True`` and the validation evaluator, then logs the
    metrics as ``teacher/<metric>`` (logger and message hub). Other hooks are not called.
    Catches an untrained or wrong teacher before hours of distillation.

    Args:
        max_batches: Evaluate only the first batches (None: the whole set).
    """

    priority = 'LOW'

    def __init__(self, max_batches: int | None = None) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f'max_batches must be >= 1 or None, got {max_batches!r}')
        self.max_batches = max_batches

    def before_train(self, runner: Any) -> None:
        base = _base(runner)
        _require(base, 'predict_with_teacher', 'TeacherValHook')
        loop = runner.val_loop  # built by Runner.train before this hook runs
        if loop is None:
            runner.logger.warning('TeacherValHook: no validation loop configured; skipped')
            return
        evaluator, dataloader = loop.evaluator, loop.dataloader
        model = runner.model
        was_training = model.training
        model.eval()
        base.predict_with_teacher = True
        seen = 0
        try:
            with torch.no_grad():
                for i, batch in enumerate(dataloader):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    outputs = model.val_step(batch)
                    evaluator.process(data_samples=outputs, data_batch=batch)
                    seen += len(outputs)
            size = len(dataloader.dataset) if self.max_batches is None else seen
            metrics = evaluator.evaluate(size)
        finally:
            base.predict_with_teacher = False
            model.train(was_training)
        for k, v in metrics.items():
            runner.message_hub.update_scalar(f'val/teacher/{k}', v)
        shown = ', '.join(f'teacher/{k}: {v:.4f}' for k, v in metrics.items())
        runner.logger.info(f'TeacherValHook ({seen} images): {shown}')
