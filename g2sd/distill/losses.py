"""Pure-torch distillation losses of the generic (pre-training) stage.

* :func:`feature_regression_loss` — G2SD's decoder-feature loss (Huang et al., CVPR 2023,
  arXiv 2302.14771): Smooth-L1 (beta 2) between projected student decoder tokens and the
  teacher's decoder tokens normalised by LayerNorm without affine parameters.
* :func:`attention_logit_mse` — D-MAE (Wang et al., ICML 2023): MSE between pre-softmax
  attention logits, student heads mapped to teacher heads by a bias-free 1x1 conv.
* :func:`relation_kl` — TinyMIM (Ren et al., CVPR 2023): KL between softmax relation maps,
  summed over keys, mean over batch, heads and queries.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    'LOSS_TYPES',
    'attention_logits',
    'attention_logit_mse',
    'feature_regression_loss',
    'layer_norm_target',
    'relation_kl',
    'relation_logits',
]

LOSS_TYPES = ('smooth_l1', 'mse', 'l1')


def layer_norm_target(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the channels with no affine parameters: (B, N, C) -> (B, N, C), fp32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def feature_regression_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_type: Literal['smooth_l1', 'mse', 'l1'] = 'smooth_l1',
    beta: float = 2.0,
    token_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise regression loss averaged over tokens and channels.

    Args:
        pred: Student predictions (B, N, C).
        target: Targets (B, N, C) (already normalised, no gradient).
        loss_type: ``'smooth_l1'`` (Huber with threshold ``beta``), ``'mse'`` or ``'l1'``.
        beta: Smooth-L1 threshold: 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta.
        token_weight: Optional (B, N) 0/1 weights selecting tokens (e.g. masked only);
            the mean is then over the selected tokens and all channels.

    Returns:
        Scalar loss (fp32).
    """
    if pred.shape != target.shape:
        raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} differ')
    pred, target = pred.float(), target.float()
    if loss_type == 'smooth_l1':
        if beta <= 0:
            raise ValueError(f'smooth_l1 beta must be > 0, got {beta}')
        elem = F.smooth_l1_loss(pred, target, reduction='none', beta=beta)
    elif loss_type == 'mse':
        elem = F.mse_loss(pred, target, reduction='none')
    elif loss_type == 'l1':
        elem = F.l1_loss(pred, target, reduction='none')
    else:
        raise ValueError(f'loss_type must be one of {LOSS_TYPES}, got {loss_type!r}')
    if token_weight is None:
        return elem.mean()
    w = token_weight.to(elem.dtype).unsqueeze(-1)
    return (elem * w).sum() / (w.sum() * elem.shape[-1]).clamp(min=1.0)


def attention_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention logits q k^T / sqrt(d): (B, H, N, d) x2 -> (B, H, N, N)."""
    return (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5


def attention_logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE (mean over all elements) between (B, H, N, N) logits with equal head counts."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f'attention shapes differ: student {tuple(student_logits.shape)} vs teacher '
            f'{tuple(teacher_logits.shape)}; map the heads first'
        )
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def relation_logits(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Relation logits a b^T * scale: (B, H, N, d) x2 -> (B, H, N, N) in fp32."""
    return (a.float() @ b.float().transpose(-2, -1)) * scale


def relation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of softmax relations over the key axis.

    Summed over keys, averaged over batch, heads and queries (TinyMIM).

    Args:
        student_logits: (B, H, N, N) student relation logits.
        teacher_logits: (B, H, N, N) teacher relation logits (no gradient).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f'relation shapes differ: student {tuple(student_logits.shape)} vs teacher '
            f'{tuple(teacher_logits.shape)} (the student block needs the teacher head count)'
        )
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()
