"""mmengine image classifier around the g2sd ViT, with batch mixup / cutmix.

Fine-tuning and specific distillation in G2SD (Huang et al., "Generic-to-Specific
Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771) follow MAE's fine-tuning
code: timm's ``Mixup`` (mixup 0.8, cutmix 1.0, label smoothing 0.1) on the batch and a
soft-target cross-entropy. The batch augmentation happens in :class:`ClsDataPreprocessor`,
i.e. before the model's ``loss()``, so a distillation wrapper that reuses this
preprocessor gives its teacher exactly the mixed images the student sees.

Batches are ``dict(inputs=(B, C, H, W) float, data_samples=(B,) int64 labels)`` as produced
by ``g2sd.FashionMNIST`` / ``g2sd.ImageFolder`` with ``default_collate``. After the
preprocessor, ``data_samples`` are (B, K) soft targets in training (when mixup, cutmix or
smoothing is on) and (B,) labels otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from g2sd.checkpoint import load_pretrained
from g2sd.distill.base import FiniteLossParsing, build_model
from g2sd.registry import MODELS

from .vit import DIST_KEYS, DistilledVisionTransformer

__all__ = ['ClsDataPreprocessor', 'ViTClassifier', 'soft_target_cross_entropy']


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_k -targets * log_softmax(logits)``: (B, K) x (B, K) -> scalar (fp32)."""
    if logits.shape != targets.shape:
        raise ValueError(
            f'logits {tuple(logits.shape)} and soft targets {tuple(targets.shape)} differ'
        )
    return torch.sum(-targets.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


@MODELS.register_module()
class ClsDataPreprocessor(BaseDataPreprocessor):
    """Move the batch to the device and, in training, apply mixup / cutmix (timm ``Mixup``).

    Args:
        num_classes: Number of classes K of the soft targets.
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables it. G2SD: 0.8.
        cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 disables it. G2SD: 1.0.
        cutmix_minmax: Optional (min, max) box ratio of cutmix (overrides ``cutmix_alpha``).
        prob: Probability of applying mixup or cutmix to a batch.
        switch_prob: Probability of cutmix instead of mixup when both are on.
        mode: timm's ``'batch'``, ``'pair'`` or ``'elem'``.
        label_smoothing: Label smoothing folded into the targets. G2SD: 0.1.

    The training batch size must be even (timm mixes a batch with its flip); use
    ``drop_last=True`` in the train dataloader.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: Sequence[float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: Literal['batch', 'pair', 'elem'] = 'batch',
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(
                f'mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}'
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing!r}')
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0 or cutmix_minmax is not None:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                cutmix_minmax=tuple(cutmix_minmax) if cutmix_minmax is not None else None,
                prob=prob,
                switch_prob=switch_prob,
                mode=mode,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    def forward(self, data: dict, training: bool = False) -> dict[str, Any]:
        """Cast to the device, stack inputs, mix in training.

        Args:
            data: ``dict(inputs=Tensor (B, C, H, W) or list of (C, H, W), data_samples=
                Tensor (B,) or list of ints)``.
            training: Apply mixup / cutmix / smoothing.

        Returns:
            ``dict(inputs=(B, C, H, W) float, data_samples=(B, K) soft targets in training
            with mixing or smoothing, else (B,) int64 labels)``.
        """
        data = self.cast_data(data)
        if not isinstance(data, Mapping) or 'inputs' not in data:
            raise TypeError(f'a batch must be a dict with "inputs", got {type(data).__name__}')
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        inputs = inputs.float()
        labels = data.get('data_samples')
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels, device=inputs.device)
        if not training or labels is None:
            return dict(inputs=inputs, data_samples=labels)
        labels = labels.long()
        if self.mixup is not None:
            if inputs.shape[0] % 2:
                raise ValueError(
                    f'mixup / cutmix need an even batch size, got {inputs.shape[0]}; set '
                    'drop_last=True in train_dataloader and an even batch_size'
                )
            inputs, targets = self.mixup(inputs, labels)
            return dict(inputs=inputs, data_samples=targets)
        if self.label_smoothing > 0:
            off = self.label_smoothing / self.num_classes
            targets = torch.full(
                (labels.shape[0], self.num_classes), off, device=inputs.device, dtype=torch.float32
            )
            targets.scatter_(1, labels.unsqueeze(1), 1.0 - self.label_smoothing + off)
            return dict(inputs=inputs, data_samples=targets)
        return dict(inputs=inputs, data_samples=labels)


@MODELS.register_module()
class ViTClassifier(FiniteLossParsing, BaseModel):
    """Image classifier: a g2sd ViT (plain or with distillation token) as ``backbone``.

    ``loss``: soft-target cross-entropy on the class-token logits for (B, K) targets
    (mixup / smoothing), cross-entropy for (B,) labels. With a
    :class:`g2sd.cls.DistilledVisionTransformer` backbone the distillation head is trained
    by the distillation wrapper (``g2sd.DistillModel``, which records
    ``backbone.head_dist``), not here. ``predict`` returns one
    ``dict(pred_score=(K,) softmax, gt_label=int tensor)`` per image.

    A plain backbone state dict (timm / MAE keys, e.g. ``export_student()`` output or a
    ``SaveStudentHook`` file) loads into this model: keys are given the ``backbone.``
    prefix on load. Loss parsing refuses a non-finite loss before the optimiser step
    (:class:`g2sd.distill.FiniteLossParsing`).

    Args:
        backbone: Config (``type='g2sd.VisionTransformer'`` /
            ``'g2sd.DistilledVisionTransformer'``) or module.
        data_preprocessor: Config or module; defaults to :class:`ClsDataPreprocessor`
            without mixing (needs ``num_classes`` of the backbone).
        pretrained: Checkpoint loaded into the backbone by :meth:`init_weights` (before
            training; not on resume), strictly through :func:`g2sd.checkpoint.load_pretrained`.
        pretrained_use: ``use`` of the loader; ``'backbone'`` accepts GD / MAE / timm /
            distiller files and allows a missing classifier.
        pretrained_allow_missing: Extra missing-key patterns (the distillation token and
            head of a distillation backbone are added automatically).
        loss_weight: Multiplier of the classification loss.
        init_cfg: mmengine ``init_cfg``.
    """

    def __init__(
        self,
        backbone: dict | nn.Module,
        data_preprocessor: dict | nn.Module | None = None,
        pretrained: str | None = None,
        pretrained_use: str = 'backbone',
        pretrained_allow_missing: Sequence[str] = (),
        loss_weight: float = 1.0,
        init_cfg: dict | None = None,
    ) -> None:
        backbone = build_model(backbone, 'backbone')
        if data_preprocessor is None:
            num_classes = int(getattr(backbone, 'num_classes', 0))
            if num_classes < 1:
                raise ValueError('the backbone has no classifier (num_classes=0)')
            data_preprocessor = dict(type='g2sd.ClsDataPreprocessor', num_classes=num_classes)
        data_preprocessor = build_model(data_preprocessor, 'data_preprocessor')
        pre_k, net_k = getattr(data_preprocessor, 'num_classes', None), backbone.num_classes
        if pre_k is not None and pre_k != net_k:
            raise ValueError(
                f'data_preprocessor.num_classes={pre_k} differs from the backbone '
                f'num_classes={net_k}'
            )
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = backbone
        if loss_weight < 0:
            raise ValueError(f'loss_weight must be >= 0, got {loss_weight!r}')
        self.loss_weight = float(loss_weight)
        self.pretrained = pretrained
        self.pretrained_use = pretrained_use
        self.pretrained_allow_missing = tuple(pretrained_allow_missing)

    # ----------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Load ``pretrained`` into the backbone (the backbone initialised itself when built)."""
        if self.init_cfg:
            super().init_weights()
        if self.pretrained:
            allow = self.pretrained_allow_missing
            if isinstance(self.backbone, DistilledVisionTransformer):
                allow = (*DIST_KEYS, *allow)
            report = load_pretrained(
                self.backbone, self.pretrained, use=self.pretrained_use, allow_missing=allow
            )
            print_log(
                'ViTClassifier.init_weights: '
                + report.summary(type(self.backbone).__name__, str(self.pretrained)),
                logger='current',
            )

    def export_student(self) -> dict[str, torch.Tensor]:
        """The backbone's state dict (timm / MAE keys, heads included)."""
        return {k: v.detach() for k, v in self.backbone.state_dict().items()}

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: torch.Tensor | None = None,
        mode: Literal['loss', 'predict', 'tensor'] = 'tensor',
    ) -> Any:
        """Dispatch on ``mode`` (mmengine contract).

        Args:
            inputs: (B, C, H, W) preprocessed images.
            data_samples: (B, K) soft targets or (B,) labels.
            mode: ``'loss'`` -> ``dict(loss_cls=...)``; ``'predict'`` -> list of
                ``dict(pred_score, gt_label)``; ``'tensor'`` -> the backbone output.
        """
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.backbone(inputs)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classification loss of the class-token head, times ``loss_weight``."""
        if targets is None:
            raise ValueError('loss mode needs data_samples (labels or soft targets)')
        out = self.backbone(inputs)
        logits = out[0] if isinstance(out, tuple) else out
        if targets.ndim == 2:
            loss = soft_target_cross_entropy(logits, targets)
        elif targets.ndim == 1:
            loss = F.cross_entropy(logits.float(), targets.long())
        else:
            raise ValueError(f'targets must be (B,) or (B, K), got {tuple(targets.shape)}')
        return dict(loss_cls=self.loss_weight * loss)

    def format_predictions(
        self, logits: torch.Tensor, data_samples: torch.Tensor | None
    ) -> list[dict[str, torch.Tensor]]:
        """(B, K) logits -> one ``dict(pred_score=(K,) softmax, gt_label=())`` per image."""
        scores = F.softmax(logits.detach().float(), dim=-1)
        out = []
        for i, s in enumerate(scores):
            item = dict(pred_score=s)
            if data_samples is not None:
                gt = data_samples[i]
                item['gt_label'] = gt.argmax(-1) if gt.ndim == 1 else gt.long()
            out.append(item)
        return out

    def predict(
        self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Eval-mode logits (averaged heads for a distillation backbone) -> per-image scores."""
        out = self.backbone(inputs)
        if isinstance(out, tuple):  # called in training mode
            out = (out[0] + out[1]) / 2
        return self.format_predictions(out, data_samples)
