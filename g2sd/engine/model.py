"""Deprecated mmengine wrapper of the generic-distillation stage (one release only).

Generic distillation of G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) and its peers are now mmengine models themselves
(:class:`g2sd.distill.DistillerBase` subclasses): configs say
``model=dict(type='g2sd.G2SDDistiller', student=..., teacher=..., teacher_checkpoint=...)``.
``g2sd.PretrainModel(algorithm=...)`` keeps old configs (and plain ``nn.Module`` algorithms
whose ``forward(imgs)`` returns a dict of losses) working for one release, with a logged
DeprecationWarning; its checkpoint keys keep the ``algorithm.`` prefix (the loader strips
it).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from g2sd.distill.base import FiniteLossParsing, TeacherHolder, build_model
from g2sd.registry import MODELS

__all__ = ['PretrainModel']


@MODELS.register_module()
class PretrainModel(FiniteLossParsing, TeacherHolder, BaseModel):
    """Deprecated: ``BaseModel`` around an "algorithm" whose ``forward(imgs)`` returns losses.

    Name the distiller directly instead (``type='g2sd.G2SDDistiller'``). Batches are
    ``dict(inputs=(B, C, H, W) or (B, 2, C, H, W), data_samples=labels)``; labels are
    ignored. A plain algorithm's ``teacher`` (kept outside its module tree) is held the
    :class:`~g2sd.distill.base.TeacherHolder` way: moved by ``.to()``, eval after
    ``train()``, shared by deep copies.

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
        msg = (
            'g2sd.PretrainModel(algorithm=...) is deprecated and will be removed in the next '
            "release: use the distiller as the model, e.g. model=dict(type='g2sd.G2SDDistiller', "
            'student=..., teacher=..., teacher_checkpoint=...)'
        )
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        print_log(f'DeprecationWarning: {msg}', logger='current', level=logging.WARNING)
        if data_preprocessor is None:
            data_preprocessor = dict(type='BaseDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        algorithm = build_model(algorithm, 'algorithm')
        self.algorithm = algorithm
        self.init_algorithm = init_algorithm
        # A DistillerBase algorithm holds (and moves) its teacher itself.
        held = None if isinstance(algorithm, TeacherHolder) else getattr(algorithm, 'teacher', None)
        self.set_teacher(held, getattr(algorithm, 'teacher_checkpoint', None))

    # ------------------------------------------------------------ pass-through
    @property
    def teacher(self) -> nn.Module | None:
        """The algorithm's frozen teacher (outside this module tree) or None."""
        return getattr(self.algorithm, 'teacher', None)

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
            losses = self.algorithm(inputs)  # a DistillerBase defaults to mode='loss'
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
