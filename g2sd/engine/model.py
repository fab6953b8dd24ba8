"""mmengine model wrapper for the task-agnostic (generic) distillation stage.

Generic distillation of G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) and its peers (D-MAE, TinyMIM, plain MAE) are
plain ``nn.Module`` "algorithms" (``forward(imgs) -> dict of losses``). This wrapper
adapts them to mmengine's ``BaseModel`` contract (data preprocessor, ``mode`` switch,
loss parsing) and refuses to take an optimiser step on a non-finite loss.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as torch_dist
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from torch import nn

from g2sd.registry import MODELS

__all__ = ['PretrainModel', 'check_finite_loss']


def _is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def check_finite_loss(loss: torch.Tensor, log_vars: dict[str, torch.Tensor]) -> None:
    """Raise ``FloatingPointError`` if ``loss`` is NaN/Inf on any rank.

    Under ``torch.distributed`` the finiteness flag is all-reduced (MIN) first, so every
    rank raises together instead of the healthy ranks hanging in the next all-reduce.

    Args:
        loss: The total loss about to be back-propagated.
        log_vars: The individual loss values, named in the error message.

    Raises:
        FloatingPointError: The total loss is not finite (on this or another rank).
    """
    finite = torch.isfinite(loss.detach()).all()
    if _is_dist() and torch_dist.get_world_size() > 1:
        flag = finite.to(torch.float32).reshape(1)
        if torch_dist.get_backend() == 'nccl' and flag.device.type != 'cuda':
            flag = flag.cuda()
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
        finite_everywhere = bool(flag.item() > 0)
    else:
        finite_everywhere = bool(finite)
    if finite_everywhere:
        return
    hub = MessageHub.get_current_instance()
    it = hub.get_info('iter')
    where = f'at iter {it + 1}' if isinstance(it, int) else 'in this iteration'
    values = ', '.join(
        f'{k}={v.detach().float().mean().item():.6g}'
        for k, v in log_vars.items()
        if isinstance(v, torch.Tensor)
    )
    who = ''
    if _is_dist():
        side = 'this rank' if not bool(finite) else 'another rank'
        who = f' (rank {torch_dist.get_rank()}; non-finite on {side})'
    raise FloatingPointError(
        f'non-finite loss {where}{who}: {values}. The optimiser step was not taken; '
        'the last saved checkpoint is intact (resume with --resume after fixing lr / AMP / data).'
    )


@MODELS.register_module()
class PretrainModel(BaseModel):
    """``BaseModel`` around a generic distiller (``g2sd.G2SDDistiller``, ``g2sd.DMAEDistiller``,
    ``g2sd.TinyMIMDistiller``, ``g2sd.MAEPretrainer``).

    Batches are ``dict(inputs=(B, C, H, W) or (B, 2, C, H, W), data_samples=labels)``;
    labels are ignored. The frozen teacher stays outside the module tree (not in
    ``state_dict()``, ``parameters()``, DDP or EMA copies); :meth:`to` moves it along.

    Args:
        algorithm: Config of the distiller (built from g2sd's ``MODELS`` with
            ``_scope_='g2sd'``) or the module itself.
        data_preprocessor: Config or module; defaults to mmengine's
            ``BaseDataPreprocessor`` (only moves tensors to the device).
        init_algorithm: Call the algorithm's ``init_weights`` from :meth:`init_weights`.
            Off by default: distillers initialise themselves when built, and the runner's
            weight initialisation must not overwrite anything they loaded.
        init_cfg: mmengine ``init_cfg`` of this wrapper.
    """

    def __init__(
        self,
        algorithm: dict | nn.Module,
        data_preprocessor: dict | nn.Module | None = None,
        init_algorithm: bool = False,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='BaseDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if isinstance(algorithm, dict):
            cfg = dict(algorithm)
            cfg.setdefault('_scope_', 'g2sd')
            algorithm = MODELS.build(cfg)
        if not isinstance(algorithm, nn.Module):
            raise TypeError(f'algorithm must be a config dict or nn.Module, got {type(algorithm)}')
        self.algorithm = algorithm
        self.init_algorithm = init_algorithm

    # ------------------------------------------------------------ pass-through
    @property
    def teacher(self) -> nn.Module | None:
        """The algorithm's frozen teacher (outside this module tree) or None."""
        return getattr(self.algorithm, 'teacher', None)

    @property
    def teacher_checkpoint(self) -> str | None:
        """Path of the teacher's weights, if the algorithm reports one."""
        return getattr(self.algorithm, 'teacher_checkpoint', None)

    def export_student(self) -> dict[str, torch.Tensor]:
        """Plain student encoder state dict (timm / MAE keys) from the algorithm."""
        fn = getattr(self.algorithm, 'export_student', None)
        if not callable(fn):
            raise TypeError(f'{type(self.algorithm).__name__} has no export_student()')
        return fn()

    # ----------------------------------------------------------------- mmengine
    def init_weights(self) -> None:
        """Initialise per ``init_cfg``; the algorithm only when ``init_algorithm=True``."""
        if self.init_algorithm:
            super().init_weights()

    def to(self, *args: Any, **kwargs: Any) -> PretrainModel:
        """Move the model, the data preprocessor's device and the out-of-tree teacher."""
        out = super().to(*args, **kwargs)
        teacher = self.teacher
        if teacher is not None:
            teacher.to(*args, **kwargs)
        return out

    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: Any = None,
        mode: Literal['loss', 'tensor', 'predict'] = 'loss',
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Dispatch on ``mode``.

        Args:
            inputs: (B, C, H, W) normalised images, or (B, 2, C, H, W) two views
                (``[:, 0]`` teacher view, ``[:, 1]`` student view).
            data_samples: Labels; unused.
            mode: ``'loss'``: the algorithm's loss dict; ``'tensor'``: student features
                (``student.forward_features`` on the student view); ``'predict'`` is not
                defined for pre-training.

        Returns:
            Loss dict or feature tensor.
        """
        if mode == 'loss':
            losses = self.algorithm(inputs)
            if not isinstance(losses, dict):
                raise TypeError(
                    f'{type(self.algorithm).__name__}.forward must return a dict of losses, '
                    f'got {type(losses)}'
                )
            return losses
        if mode == 'tensor':
            student = getattr(self.algorithm, 'student', None)
            if not isinstance(student, nn.Module):
                raise TypeError(f'{type(self.algorithm).__name__} has no student module')
            x = inputs[:, 1] if inputs.ndim == 5 else inputs
            fwd = getattr(student, 'forward_features', None)
            return fwd(x) if callable(fwd) else student(x)
        if mode == 'predict':
            raise NotImplementedError(
                "PretrainModel has no 'predict' mode: generic distillation has no evaluation "
                'metric. Evaluate the exported student with a cls/det/seg config instead, and '
                'leave val_dataloader / val_cfg / val_evaluator unset for pre-training.'
            )
        raise ValueError(f"mode must be 'loss', 'tensor' or 'predict', got {mode!r}")

    def parse_losses(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mmengine's parsing (sum of entries whose key contains ``'loss'``) + finiteness check.

        Raises:
            FloatingPointError: The total loss is NaN/Inf; raised before backward and
                ``optimizer.step``, so no parameter changes and no checkpoint is written.
        """
        loss, log_vars = super().parse_losses(losses)
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f'no loss term in {sorted(losses)}: keys must contain "loss"')
        check_finite_loss(loss, log_vars)
        return loss, log_vars
