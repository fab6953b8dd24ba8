"""Pure-torch knowledge-distillation losses of the task-specific (SD) stage.

Every loss exists as a function and as a registered ``nn.Module`` (``type='g2sd.HardKDLoss'``
...) with a ``loss_weight``, so the distillation wrapper (:class:`g2sd.distill.kd.DistillModel`)
builds them from config. None of them has trainable parameters; adapters live in the wrapper.

* :func:`hard_kd_loss` — DeiT hard distillation (Touvron et al., ICML 2021): cross-entropy of
  the student's distillation head against the teacher's top class. G2SD's classification SD
  (Huang et al., CVPR 2023, arXiv 2302.14771) uses it with weight 1/2.
* :func:`soft_kd_loss` — Hinton et al. 2015: KL(p_t^T || p_s^T) x T^2, summed over classes,
  mean over samples.
* :func:`nkd_loss` — normalized KD (Yang et al., "From Knowledge Distillation to
  Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
  Labels", ICCV 2023), in the form of G2SD's ``NKD_loss.py``: a target-class term weighted by
  the teacher's target probability plus an ``alpha x T^2`` cross-entropy between the
  *normalized non-target* distributions.
* :func:`feature_loss` — MSE / Smooth-L1 / L1 between (adapted) features (mean over elements),
  built on :func:`g2sd.distill.losses.feature_regression_loss`.
* :func:`channel_wise_divergence` — CWD (Shu et al., "Channel-wise Knowledge Distillation for
  Dense Prediction", ICCV 2021): per channel a softmax over the H*W positions (temperature
  tau), KL(teacher || student) x tau^2, summed over positions, divided by N*C. G2SD's
  segmentation SD applies it to the 150-class logits (tau 1, weight 3).
* :func:`masked_feature_mse` / :func:`masked_bce_loss` — FRS-style ("Distilling Object
  Detectors with Feature Richness", Du et al., NeurIPS 2021) losses of G2SD's detection SD:
  squared error of FPN features and BCE of RPN objectness, weighted by the teacher's
  richness mask ``m = max_anchors sigmoid(teacher objectness)`` and normalised by ``sum(m)``.

Logits are (B, K); dense maps are (B, C, H, W); all losses compute in fp32.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from g2sd.distill.losses import feature_regression_loss
from g2sd.registry import MODELS

__all__ = [
    'ChannelWiseDivergence',
    'FeatureLoss',
    'HardKDLoss',
    'MaskedBCELoss',
    'MaskedFeatureMSELoss',
    'NKDLoss',
    'SoftKDLoss',
    'channel_wise_divergence',
    'feature_loss',
    'hard_kd_loss',
    'loss_name',
    'masked_bce_loss',
    'masked_feature_mse',
    'nkd_loss',
    'richness_mask',
    'soft_kd_loss',
]


def _check_logits(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f'{what} needs student and teacher logits of the same shape (B, K), got '
            f'{tuple(student.shape)} and {tuple(teacher.shape)}'
        )


def _check_temperature(value: float, name: str = 'temperature') -> float:
    if not value > 0:
        raise ValueError(f'{name} must be > 0, got {value!r}')
    return float(value)


# ----------------------------------------------------------------------- functions
def hard_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DeiT hard distillation: ``CE(student, argmax teacher)``, mean over the batch.

    Args:
        student_logits: (B, K) logits of the student's distillation head.
        teacher_logits: (B, K) teacher logits (no gradient needed).

    Returns:
        Scalar loss (fp32).
    """
    _check_logits(student_logits, teacher_logits, 'hard_kd_loss')
    return F.cross_entropy(student_logits.float(), teacher_logits.detach().argmax(dim=-1))


def soft_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Soft distillation ``KL(softmax(t/T) || softmax(s/T)) * T^2``.

    Summed over the classes, averaged over the batch (``reduction='batchmean'``).

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K).
        temperature: T > 0.

    Returns:
        Scalar loss (fp32).
    """
    _check_logits(student_logits, teacher_logits, 'soft_kd_loss')
    t = _check_temperature(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction='batchmean', log_target=True) * t * t


def _labels(gt: torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    """(B,) class ids from (B,) ids or (B, K) (soft / mixup) targets (argmax)."""
    if gt.ndim == 2 and gt.shape == (batch, num_classes):
        return gt.argmax(dim=-1)
    if gt.ndim == 1 and gt.shape[0] == batch and not gt.is_floating_point():
        return gt.long()
    raise ValueError(
        f'gt must be (B,) class ids or (B, K) targets with B={batch}, K={num_classes}, '
        f'got {tuple(gt.shape)} ({gt.dtype})'
    )


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    gt: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Normalized KD as in G2SD's ``NKD_loss.py``.

    With y the label (argmax of soft / mixup targets), ``p = softmax(s)``,
    ``w = softmax(t)[y]`` (teacher, detached) and the non-target distributions
    ``q^s, q^t = softmax`` over the K-1 non-target logits divided by T::

        L = -mean_b(w * log p_y) - alpha * T^2 * mean_b(sum_{k != y} q^t_k log q^s_k)

    The official code removes the target by subtracting 1000 from its logit and
    renormalising; here the target is excluded exactly.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K).
        gt: (B,) class ids or (B, K) soft targets.
        temperature: T > 0 of the non-target term.
        alpha: Weight of the non-target term.

    Returns:
        Scalar loss (fp32).
    """
    _check_logits(student_logits, teacher_logits, 'nkd_loss')
    t = _check_temperature(temperature)
    s, tl = student_logits.float(), teacher_logits.detach().float()
    b, k = s.shape
    if k < 2:
        raise ValueError(f'nkd_loss needs at least 2 classes, got {k}')
    label = _labels(gt, b, k).unsqueeze(1)  # (B, 1)
    log_p_y = F.log_softmax(s, dim=-1).gather(1, label)  # (B, 1)
    w_y = F.softmax(tl, dim=-1).gather(1, label)  # (B, 1)
    target_loss = -(w_y * log_p_y).mean()
    keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, label, False)
    s_non = s[keep].view(b, k - 1) / t
    t_non = tl[keep].view(b, k - 1) / t
    non_target = (F.softmax(t_non, dim=-1) * F.log_softmax(s_non, dim=-1)).sum(-1).mean()
    return target_loss - alpha * t * t * non_target


def feature_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    loss_type: Literal['mse', 'smooth_l1', 'l1'] = 'mse',
    beta: float = 1.0,
) -> torch.Tensor:
    """Element-wise regression between features of equal shape, mean over all elements.

    Args:
        student: (B, ...) student (adapted) features.
        teacher: (B, ...) teacher features (detached here).
        loss_type: ``'mse'``, ``'smooth_l1'`` (threshold ``beta``) or ``'l1'``.
        beta: Smooth-L1 threshold.

    Returns:
        Scalar loss (fp32).
    """
    return feature_regression_loss(student, teacher.detach(), loss_type=loss_type, beta=beta)


def channel_wise_divergence(
    student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """Channel-wise distillation (CWD) between dense maps.

    For every sample n and channel c, ``p^T = softmax_hw(T[n, c] / tau)`` and
    ``p^S = softmax_hw(S[n, c] / tau)``; the loss is
    ``tau^2 / (N * C) * sum_{n, c, hw} p^T (log p^T - log p^S)`` (KL, as in the CWD paper's
    code; G2SD's copy uses the cross-entropy, which differs by the constant teacher entropy).

    Args:
        student: (N, C, H, W) student maps (e.g. segmentation logits).
        teacher: (N, C, H, W) teacher maps.
        tau: Temperature > 0.

    Returns:
        Scalar loss (fp32).
    """
    if student.ndim != 4 or student.shape != teacher.shape:
        raise ValueError(
            'channel_wise_divergence needs maps of the same shape (N, C, H, W), got '
            f'{tuple(student.shape)} and {tuple(teacher.shape)}'
        )
    tau = _check_temperature(tau, 'tau')
    n, c = student.shape[:2]
    log_s = F.log_softmax(student.float().flatten(2) / tau, dim=-1)
    log_t = F.log_softmax(teacher.detach().float().flatten(2) / tau, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum()
    return kl * tau * tau / (n * c)


def richness_mask(objectness_logits: torch.Tensor) -> torch.Tensor:
    """FRS richness mask: ``max`` over anchors of ``sigmoid(logits)``, detached.

    Args:
        objectness_logits: (N, A, H, W) teacher RPN objectness logits.

    Returns:
        (N, H, W) mask in [0, 1].
    """
    if objectness_logits.ndim != 4:
        raise ValueError(
            f'objectness logits must be (N, A, H, W), got {tuple(objectness_logits.shape)}'
        )
    return objectness_logits.detach().float().sigmoid().amax(dim=1)


def _resolve_mask(
    mask: torch.Tensor | None, mask_logits: torch.Tensor | None, ref: torch.Tensor
) -> torch.Tensor:
    if (mask is None) == (mask_logits is None):
        raise ValueError('give exactly one of mask (N, H, W) and mask_logits (N, A, H, W)')
    m = richness_mask(mask_logits) if mask is None else mask.detach().float()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    n, _, h, w = ref.shape
    if m.shape != (n, h, w):
        raise ValueError(f'mask must be (N, H, W) = {(n, h, w)}, got {tuple(m.shape)}')
    return m


def masked_feature_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """FRS feature loss ``sum_{n,c,h,w} m (T - S)^2 / sum_{n,h,w} m``.

    Args:
        student: (N, C, H, W) adapted student features.
        teacher: (N, C, H, W) teacher features.
        mask: (N, H, W) (or (N, 1, H, W)) weights, e.g. :func:`richness_mask`.
        mask_logits: (N, A, H, W) teacher objectness logits; the mask is
            :func:`richness_mask` of them. Give ``mask`` or ``mask_logits``.
        eps: Lower bound of the normaliser.

    Returns:
        Scalar loss (fp32).
    """
    if student.ndim != 4 or student.shape != teacher.shape:
        raise ValueError(
            'masked_feature_mse needs features of the same shape (N, C, H, W), got '
            f'{tuple(student.shape)} and {tuple(teacher.shape)}'
        )
    m = _resolve_mask(mask, mask_logits, student)
    sq = (student.float() - teacher.detach().float()).pow(2).sum(dim=1)  # (N, H, W)
    return (sq * m).sum() / m.sum().clamp(min=eps)


def masked_bce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """FRS objectness loss ``sum_{n,a,h,w} m BCE(sig(s), sig(t)) / sum_{n,h,w} m``.

    Args:
        student_logits: (N, A, H, W) student objectness logits.
        teacher_logits: (N, A, H, W) teacher objectness logits.
        mask: (N, H, W) weights; default :func:`richness_mask` of ``teacher_logits``.
        eps: Lower bound of the normaliser.

    Returns:
        Scalar loss (fp32).
    """
    if student_logits.ndim != 4 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            'masked_bce_loss needs logits of the same shape (N, A, H, W), got '
            f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}'
        )
    t = teacher_logits.detach().float()
    m = _resolve_mask(mask, t if mask is None else None, student_logits)
    bce = F.binary_cross_entropy_with_logits(student_logits.float(), t.sigmoid(), reduction='none')
    return (bce * m.unsqueeze(1)).sum() / m.sum().clamp(min=eps)


# ------------------------------------------------------------------------ modules
def loss_name(module_or_type: nn.Module | str | type) -> str:
    """Snake-case name of a loss without the ``Loss`` suffix (``HardKDLoss`` -> ``hard_kd``)."""
    if isinstance(module_or_type, str):
        name = module_or_type.rsplit('.', 1)[-1]
    elif isinstance(module_or_type, type):
        name = module_or_type.__name__
    else:
        name = type(module_or_type).__name__
    name = re.sub(r'Loss$', '', name) or name
    name = re.sub(r'([a-z0-9])([A-Z])', r'\1_\2', name)
    name = re.sub(r'([A-Z]+)([A-Z][a-z])', r'\1_\2', name)
    return name.lower()


class _WeightedLoss(nn.Module):
    """Base: stores ``loss_weight`` and multiplies the value of :meth:`compute` by it."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        if not isinstance(loss_weight, (int, float)) or loss_weight < 0:
            raise ValueError(f'loss_weight must be a number >= 0, got {loss_weight!r}')
        self.loss_weight = float(loss_weight)

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'


@MODELS.register_module()
class HardKDLoss(_WeightedLoss):
    """DeiT hard distillation, see :func:`hard_kd_loss` (G2SD classification SD).

    Args:
        loss_weight: Multiplier of the loss (G2SD: 0.5).
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(B, K) student and teacher logits -> weighted scalar loss."""
        return self.loss_weight * hard_kd_loss(student, teacher)


@MODELS.register_module()
class SoftKDLoss(_WeightedLoss):
    """Soft distillation (KL with temperature, x T^2), see :func:`soft_kd_loss`.

    Args:
        temperature: T > 0.
        loss_weight: Multiplier of the loss.
    """

    def __init__(self, temperature: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        self.temperature = _check_temperature(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(B, K) student and teacher logits -> weighted scalar loss."""
        return self.loss_weight * soft_kd_loss(student, teacher, self.temperature)


@MODELS.register_module()
class NKDLoss(_WeightedLoss):
    """Normalized KD (G2SD's ``--enable_nkd``), see :func:`nkd_loss`; needs the labels.

    Args:
        temperature: T of the non-target term.
        alpha: Weight of the non-target term.
        loss_weight: Multiplier of the loss.
    """

    requires_gt = True

    def __init__(
        self, temperature: float = 1.0, alpha: float = 1.0, loss_weight: float = 1.0
    ) -> None:
        super().__init__(loss_weight)
        self.temperature = _check_temperature(temperature)
        self.alpha = float(alpha)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, gt: torch.Tensor
    ) -> torch.Tensor:
        """(B, K) logits and (B,) labels or (B, K) soft targets -> weighted scalar loss."""
        return self.loss_weight * nkd_loss(student, teacher, gt, self.temperature, self.alpha)


@MODELS.register_module()
class FeatureLoss(_WeightedLoss):
    """MSE / Smooth-L1 / L1 between features of equal shape, see :func:`feature_loss`.

    Args:
        loss_type: ``'mse'``, ``'smooth_l1'`` or ``'l1'``.
        beta: Smooth-L1 threshold.
        loss_weight: Multiplier of the loss.
    """

    def __init__(
        self,
        loss_type: Literal['mse', 'smooth_l1', 'l1'] = 'mse',
        beta: float = 1.0,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(loss_weight)
        if loss_type not in ('mse', 'smooth_l1', 'l1'):
            raise ValueError(f"loss_type must be 'mse', 'smooth_l1' or 'l1', got {loss_type!r}")
        self.loss_type = loss_type
        self.beta = float(beta)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Features of equal shape -> weighted scalar loss."""
        return self.loss_weight * feature_loss(student, teacher, self.loss_type, self.beta)


@MODELS.register_module()
class ChannelWiseDivergence(_WeightedLoss):
    """Channel-wise distillation, see :func:`channel_wise_divergence` (G2SD seg SD).

    Args:
        tau: Temperature (G2SD: 1).
        loss_weight: Multiplier of the loss (G2SD: 3).
    """

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        self.tau = _check_temperature(tau, 'tau')

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) student and teacher maps -> weighted scalar loss."""
        return self.loss_weight * channel_wise_divergence(student, teacher, self.tau)


@MODELS.register_module()
class MaskedFeatureMSELoss(_WeightedLoss):
    """FRS masked feature loss, see :func:`masked_feature_mse` (G2SD det SD, weight 0.001).

    Args:
        loss_weight: Multiplier of the loss.
    """

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, C, H, W) features and a mask (or teacher objectness logits) -> scalar loss."""
        return self.loss_weight * masked_feature_mse(student, teacher, mask, mask_logits)


@MODELS.register_module()
class MaskedBCELoss(_WeightedLoss):
    """FRS masked objectness BCE, see :func:`masked_bce_loss` (G2SD det SD, weight 0.1).

    Args:
        loss_weight: Multiplier of the loss.
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, A, H, W) objectness logits (and an optional mask) -> scalar loss."""
        return self.loss_weight * masked_bce_loss(student, teacher, mask)
