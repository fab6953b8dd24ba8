"""Scheduling-only hooks for distillation runs (no loss is computed here).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) distils from a frozen teacher that lives outside the trained module
tree. :class:`TeacherCheckHook` verifies that contract before training starts and that
the teacher is unchanged at the end; :class:`SaveStudentHook` exports the plain student
encoder (timm / MAE keys, torch + safetensors) when the run finishes, so users directly
get a backbone for mmdet / mmseg / timm.

Ordering: both hooks only read the model. ``TeacherCheckHook`` runs ``before_train``,
after mmengine has built the optimiser and loaded / resumed checkpoints; the
``SaveStudentHook`` export runs ``after_run``, after ``CheckpointHook`` has written the
final checkpoint (and after ``EMAHook`` has swapped weights back, i.e. it exports the raw,
not the averaged, student).
"""

from __future__ import annotations

import os.path as osp
from typing import Any

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from g2sd.checkpoint import atomic_save
from g2sd.registry import HOOKS

__all__ = ['SaveStudentHook', 'TeacherCheckHook', 'unwrap_algorithm']


def unwrap_algorithm(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(base model without DDP wrapper, its ``.algorithm`` or the base model itself)."""
    base = model.module if is_model_wrapper(model) else model
    return base, getattr(base, 'algorithm', base)


def _teacher_checksum(teacher: nn.Module) -> tuple[float, int]:
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for p in teacher.parameters():
            total = total + p.detach().double().sum().cpu()
            count += p.numel()
    return float(total), count


@HOOKS.register_module()
class TeacherCheckHook(Hook):
    """Check the frozen-teacher contract before training; log path and checksum.

    Before training: the teacher (``model.algorithm.teacher``, DDP unwrapped) has no
    parameter with ``requires_grad``, every sub-module is in eval mode, and none of its
    modules / tensors is part of the trained model (``model.modules()``,
    ``model.state_dict()``). Logs ``teacher_checkpoint`` and a checksum (float64 sum of
    all parameters). After training the checksum must be unchanged.

    Args:
        require_teacher: Raise if the algorithm has no teacher (e.g. a distillation
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
        self._checksum, count = _teacher_checksum(teacher)
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
        now, _ = _teacher_checksum(algorithm.teacher)
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
