"""Pure-torch distillation losses of both stages (generic pre-training and task-specific SD).

Generic distillation (functions used by :mod:`g2sd.distill.generic`):

* :func:`feature_regression_loss` — G2SD's decoder-feature loss (Huang et al., CVPR 2023,
  arXiv 2302.14771): Smooth-L1 (beta 2) between projected student decoder tokens and the
  teacher's decoder tokens normalised by LayerNorm without affine parameters.
* :func:`attention_logit_mse` — D-MAE (Wang et al., ICML 2023): MSE between pre-softmax
  attention logits, student heads mapped to teacher heads by a bias-free 1x1 conv.
* :func:`relation_kl` — TinyMIM (Ren et al., CVPR 2023): KL between softmax relation maps,
  summed over keys, mean over batch, heads and queries.

Task-specific distillation: every loss exists as a function and as a registered ``nn.Module``
(``type='g2sd.HardKDLoss'`` ...) with a ``loss_weight``, so the distillation wrapper
(:class:`g2sd.distill.DistillModel`) builds them from config. None of them has trainable
parameters except the optional 1x1 align conv of :class:`ChannelWiseDivergence` and
:class:`PixelWiseKLDivergence`, which lives in the loss as in the official code; other adapters
live in the wrapper.

* :func:`hard_kd_loss` — DeiT hard distillation (Touvron et al., ICML 2021): cross-entropy of
  the student's distillation head against the teacher's top class. G2SD's classification SD
  uses it with weight 1/2.
* :func:`soft_kd_loss` — Hinton et al. 2015: KL(p_t^T || p_s^T) x T^2, summed over classes,
  mean over samples.
* :func:`nkd_loss` — normalized KD (Yang et al., "From Knowledge Distillation to
  Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
  Labels", ICCV 2023), in the form of G2SD's ``NKD_loss.py``: a target-class term weighted by
  the teacher's target probability plus an ``alpha x T^2`` cross-entropy between the
  *normalized non-target* distributions.
* :func:`feature_loss` — MSE / Smooth-L1 / L1 between (adapted) features (mean over elements),
  built on :func:`feature_regression_loss`.
* :func:`channel_wise_divergence` — CWD (Shu et al., "Channel-wise Knowledge Distillation for
  Dense Prediction", ICCV 2021): per channel a softmax over the H*W positions (temperature
  tau); by default the official G2SD form (``G2SD_seg_dis/src/distillation/losses/cwd.py``),
  the cross-entropy ``-sum p_t log p_s`` x tau^2 / (N * C) with C the student's channel count
  before alignment; KL(p_t || p_s) (same gradient, lower by the teacher's entropy) as an option.
  G2SD's segmentation SD applies it to the 150-class logits (tau 1, weight 3).
* :func:`pixel_wise_kl` — the official alternative of G2SD's segmentation SD
  (``G2SD_seg_dis/src/distillation/losses/kl.py`` ``KLDivergence``, ``distill_kl.py``): per
  pixel KL(softmax_c(T / tau) || softmax_c(S / tau)) x tau^2 over the channels (classes), i.e.
  :func:`soft_kd_loss` of every pixel; reduction ``'mean'`` (official default: / (N C H W)),
  ``'batchmean'`` (/ N) or ``'sum'``.
* :func:`masked_feature_mse` / :func:`masked_bce_loss` — FRS-style ("Distilling Object
  Detectors with Feature Richness", Du et al., NeurIPS 2021) losses of G2SD's detection SD
  (``G2SD_det_dis/tools/plain_distill_net.py``): squared error of FPN features and BCE of RPN
  objectness, weighted by the teacher's richness mask ``m = max_anchors sigmoid(teacher
  objectness)`` and normalised by ``sum(m)``. The BCE defaults to the official form on sigmoid
  probabilities (``F.binary_cross_entropy``, logs clamped at -100); BCE-with-logits is an option.

Tokens are (B, N, C); logits are (B, K); dense maps are (B, C, H, W); all losses compute in fp32.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from g2sd.registry import MODELS

__all__ = [
    'KL_REDUCTIONS',
    'LOSS_TYPES',
    'ChannelWiseDivergence',
    'FeatureLoss',
    'HardKDLoss',
    'MaskedBCELoss',
    'MaskedFeatureMSELoss',
    'NKDLoss',
    'PixelWiseKLDivergence',
    'SoftKDLoss',
    'attention_logit_mse',
    'attention_logits',
    'channel_wise_divergence',
    'feature_loss',
    'feature_regression_loss',
    'hard_kd_loss',
    'layer_norm_target',
    'loss_name',
    'masked_bce_loss',
    'masked_feature_mse',
    'nkd_loss',
    'pixel_wise_kl',
    'relation_kl',
    'relation_logits',
    'richness_mask',
    'soft_kd_loss',
]

# ------------------------------------------------------------ generic distillation
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


# ------------------------------------------------------ task-specific distillation
def _check_same_shape(
    student: torch.Tensor,
    teacher: torch.Tensor,
    what: str,
    noun: str = 'student and teacher logits',
    layout: str = '(B, K)',
) -> None:
    """Refuse a student / teacher pair whose shapes differ or do not have ``layout``'s rank."""
    if student.ndim != layout.count(',') + 1 or student.shape != teacher.shape:
        raise ValueError(
            f'{what} needs {noun} of the same shape {layout}, got '
            f'{tuple(student.shape)} and {tuple(teacher.shape)}'
        )


def _check_temperature(value: float, name: str = 'temperature') -> float:
    if not value > 0:
        raise ValueError(f'{name} must be > 0, got {value!r}')
    return float(value)


def hard_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DeiT hard distillation: ``CE(student, argmax teacher)``, mean over the batch.

    Args:
        student_logits: (B, K) logits of the student's distillation head.
        teacher_logits: (B, K) teacher logits (no gradient needed).

    Returns:
        Scalar loss (fp32).
    """
    _check_same_shape(student_logits, teacher_logits, 'hard_kd_loss')
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
    _check_same_shape(student_logits, teacher_logits, 'soft_kd_loss')
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
    _check_same_shape(student_logits, teacher_logits, 'nkd_loss')
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


_CWD_FORMS = ('ce', 'kl')
_BCE_FORMS = ('prob', 'logits')


def _check_form(form: str, forms: tuple[str, ...], what: str, name: str = 'form') -> str:
    """Refuse a ``name`` (form / reduction) of ``what`` that is not one of ``forms``."""
    if form not in forms:
        raise ValueError(f'{what} {name} must be one of {forms}, got {form!r}')
    return form


def channel_wise_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    form: Literal['ce', 'kl'] = 'ce',
    student_channels: int | None = None,
) -> torch.Tensor:
    """Channel-wise distillation (CWD) between dense maps of equal shape.

    For every sample n and channel c, ``p^T = softmax_hw(T[n, c] / tau)`` and
    ``log p^S = log_softmax_hw(S[n, c] / tau)``. The official G2SD form (``form='ce'``,
    ``G2SD_seg_dis/src/distillation/losses/cwd.py``, following the CWD paper's code) is the
    cross-entropy::

        L = tau^2 / (N * C_s) * sum_{n, c, hw} -p^T log p^S

    ``form='kl'`` gives ``sum p^T (log p^T - log p^S)`` with the same factor: the same
    gradient, lower by the teacher's entropy (its logged values are not comparable with the
    official logs).

    Args:
        student: (N, C, H, W) student maps (e.g. segmentation logits), already aligned to the
            teacher's channels.
        teacher: (N, C, H, W) teacher maps.
        tau: Temperature > 0.
        form: ``'ce'`` (official, default) or ``'kl'``.
        student_channels: C_s of the normaliser: the student's channel count before a 1x1
            alignment (as the official code divides); default ``C`` of ``student``.

    Returns:
        Scalar loss (fp32).
    """
    _check_same_shape(student, teacher, 'channel_wise_divergence', 'maps', '(N, C, H, W)')
    tau = _check_temperature(tau, 'tau')
    _check_form(form, _CWD_FORMS, 'channel_wise_divergence')
    n, c = student.shape[:2]
    if student_channels is not None:
        if not isinstance(student_channels, int) or student_channels < 1:
            raise ValueError(f'student_channels must be an int >= 1, got {student_channels!r}')
        c = student_channels
    log_s = F.log_softmax(student.float().flatten(2) / tau, dim=-1)
    log_t = F.log_softmax(teacher.detach().float().flatten(2) / tau, dim=-1)
    p_t = log_t.exp()
    total = -(p_t * log_s).sum() if form == 'ce' else (p_t * (log_t - log_s)).sum()
    return total * tau * tau / (n * c)


#: ``reduction`` values of :func:`pixel_wise_kl` (those of ``F.kl_div`` that give a scalar).
KL_REDUCTIONS = ('mean', 'batchmean', 'sum')


def pixel_wise_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    reduction: Literal['mean', 'batchmean', 'sum'] = 'mean',
) -> torch.Tensor:
    """Pixel-wise KL between class distributions of dense maps of equal shape.

    The official ``KLDivergence`` of ``G2SD_seg_dis/src/distillation/losses/kl.py``::

        L = tau^2 * kl_div(log_softmax(S / tau, dim=1), softmax(T / tau, dim=1), reduction)

    i.e. with ``p = softmax`` over the C channels at each (n, h, w) and
    ``k = sum_{n, c, hw} p^T (log p^T - log p^S)``: ``'mean'`` (official default)
    ``tau^2 k / (N C H W)``, ``'batchmean'`` ``tau^2 k / N``, ``'sum'`` ``tau^2 k``. Computed
    as :func:`soft_kd_loss` (per-row KL, mean over rows) of the N H W pixel rows, rescaled.

    Args:
        student: (N, C, H, W) student maps (e.g. segmentation logits), already aligned to the
            teacher's channels.
        teacher: (N, C, H, W) teacher maps (detached here).
        tau: Temperature > 0.
        reduction: ``'mean'``, ``'batchmean'`` or ``'sum'``.

    Returns:
        Scalar loss (fp32).
    """
    _check_same_shape(student, teacher, 'pixel_wise_kl', 'maps', '(N, C, H, W)')
    tau = _check_temperature(tau, 'tau')
    _check_form(reduction, KL_REDUCTIONS, 'pixel_wise_kl', 'reduction')
    n, c, h, w = student.shape
    rows = soft_kd_loss(
        student.movedim(1, -1).reshape(-1, c), teacher.movedim(1, -1).reshape(-1, c), tau
    )  # tau^2 k / (N H W)
    if reduction == 'mean':
        return rows / c
    return rows * (h * w if reduction == 'batchmean' else n * h * w)


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


Levels = torch.Tensor | Sequence[torch.Tensor]


def _levels(
    what: str, student: Levels, teacher: Levels, **others: Levels | None
) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor | None]]] | None:
    """Per-level argument tuples when ``student`` is a list / tuple of levels, else None.

    Raises:
        TypeError: A list student with a non-list teacher / mask (or the reverse).
        ValueError: Lists of different lengths, or an empty list.
    """
    multi = isinstance(student, (list, tuple))
    given = {'teacher': teacher, **{k: v for k, v in others.items() if v is not None}}
    for name, value in given.items():
        if isinstance(value, (list, tuple)) != multi:
            raise TypeError(
                f'{what}: student is {"a list of levels" if multi else "one tensor"} but '
                f'{name} is {type(value).__name__}; give both per level or both as one tensor'
            )
    if not multi:
        return None
    n = len(student)
    if n == 0:
        raise ValueError(f'{what}: student has no levels')
    for name, value in given.items():
        if len(value) != n:
            raise ValueError(f'{what}: student has {n} levels, {name} has {len(value)}')
    return [
        (
            student[i],
            teacher[i],
            {k: (None if v is None else v[i]) for k, v in others.items()},
        )
        for i in range(n)
    ]


def masked_feature_mse(
    student: Levels,
    teacher: Levels,
    mask: Levels | None = None,
    mask_logits: Levels | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """FRS feature loss ``sum_{n,c,h,w} m (T - S)^2 / sum_{n,h,w} m``.

    Not divided by the channels (``G2SD_det_dis/tools/plain_distill_net.py``). With lists
    of per-level tensors (FPN levels), the per-level terms, each normalised by its own
    ``sum m_l``, are summed.

    Args:
        student: (N, C, H, W) adapted student features, or a list of them per level.
        teacher: (N, C, H, W) teacher features (or a list per level).
        mask: (N, H, W) (or (N, 1, H, W)) weights, e.g. :func:`richness_mask` (or a list).
        mask_logits: (N, A, H, W) teacher objectness logits (or a list per level); the mask
            is :func:`richness_mask` of them. Give ``mask`` or ``mask_logits``.
        eps: Lower bound of the normaliser.

    Returns:
        Scalar loss (fp32).
    """
    per_level = _levels('masked_feature_mse', student, teacher, mask=mask, mask_logits=mask_logits)
    if per_level is not None:
        return sum(masked_feature_mse(s, t, eps=eps, **kw) for s, t, kw in per_level)  # type: ignore[return-value]
    _check_same_shape(student, teacher, 'masked_feature_mse', 'features', '(N, C, H, W)')
    m = _resolve_mask(mask, mask_logits, student)
    sq = (student.float() - teacher.detach().float()).pow(2).sum(dim=1)  # (N, H, W)
    return (sq * m).sum() / m.sum().clamp(min=eps)


def masked_bce_loss(
    student_logits: Levels,
    teacher_logits: Levels,
    mask: Levels | None = None,
    eps: float = 1e-6,
    form: Literal['prob', 'logits'] = 'prob',
) -> torch.Tensor:
    """FRS objectness loss ``sum_{n,a,h,w} m BCE(sig(s), sig(t)) / sum_{n,h,w} m``.

    ``form='prob'`` (default, the official G2SD detection SD term of
    ``G2SD_det_dis/tools/plain_distill_net.py``; the det configs use it) applies
    ``F.binary_cross_entropy`` to the sigmoid probabilities, whose logs are clamped at -100:
    a saturated student logit is penalised at most 100 per log term (student logit 17,
    teacher 0.5: 50.0). ``form='logits'`` uses ``F.binary_cross_entropy_with_logits`` (exact
    log-sigmoid; the same value on ordinary logits, 8.5 in that example). Computed in fp32
    outside autocast (CUDA autocast refuses ``binary_cross_entropy``).

    With lists of per-level tensors (RPN levels), the per-level terms, each normalised by
    its own ``sum m_l``, are summed.

    Args:
        student_logits: (N, A, H, W) student objectness logits, or a list per level.
        teacher_logits: (N, A, H, W) teacher objectness logits (or a list per level).
        mask: (N, H, W) weights (or a list); default :func:`richness_mask` of
            ``teacher_logits``.
        eps: Lower bound of the normaliser.
        form: ``'prob'`` (official, default) or ``'logits'``.

    Returns:
        Scalar loss (fp32).
    """
    per_level = _levels('masked_bce_loss', student_logits, teacher_logits, mask=mask)
    if per_level is not None:
        return sum(masked_bce_loss(s, t, kw['mask'], eps=eps, form=form) for s, t, kw in per_level)  # type: ignore[return-value]
    _check_same_shape(student_logits, teacher_logits, 'masked_bce_loss', 'logits', '(N, A, H, W)')
    _check_form(form, _BCE_FORMS, 'masked_bce_loss')
    t = teacher_logits.detach().float()
    m = _resolve_mask(mask, t if mask is None else None, student_logits)
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = student_logits.float()
        if form == 'prob':
            bce = F.binary_cross_entropy(s.sigmoid(), t.sigmoid(), reduction='none')
        else:
            bce = F.binary_cross_entropy_with_logits(s, t.sigmoid(), reduction='none')
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
    """Base of the registered losses: validates and stores ``loss_weight``.

    Each subclass's ``forward`` returns ``loss_weight`` times the value of its function.

    Args:
        loss_weight: Multiplier of the loss (>= 0).
    """

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
        if loss_type not in LOSS_TYPES:
            raise ValueError(f'loss_type must be one of {LOSS_TYPES}, got {loss_type!r}')
        self.loss_type = loss_type
        self.beta = float(beta)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Features of equal shape -> weighted scalar loss."""
        return self.loss_weight * feature_loss(student, teacher, self.loss_type, self.beta)


class _AlignedMapLoss(_WeightedLoss):
    """Base of the dense-map losses with the official optional 1x1 align conv.

    As in the official ``ChannelWiseDivergence`` / ``KLDivergence``
    (``G2SD_seg_dis/src/distillation/losses/``), a trainable 1x1 conv (``align``) maps the
    student (N, C_s, H, W) to the teacher's (N, C_t, H, W) when ``student_channels`` and
    ``teacher_channels`` differ.

    Args:
        loss_weight: Multiplier of the loss.
        student_channels: C_s; with ``teacher_channels``, builds the align conv when they
            differ. ``None``: no alignment, both maps must have the same channels.
        teacher_channels: C_t.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
    ) -> None:
        super().__init__(loss_weight)
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError(
                'give both student_channels and teacher_channels or neither, got '
                f'student_channels={student_channels!r}, teacher_channels={teacher_channels!r}'
            )
        for name, value in (('student', student_channels), ('teacher', teacher_channels)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f'{name}_channels must be an int >= 1, got {value!r}')
        self.student_channels = student_channels
        self.align = (
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
            if student_channels is not None and student_channels != teacher_channels
            else None
        )

    def _aligned(self, student: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(N, C_s, H, W) -> (the student aligned to the teacher's channels, C_s)."""
        if student.ndim != 4:
            raise ValueError(f'student maps must be (N, C, H, W), got {tuple(student.shape)}')
        c_s = student.shape[1]
        if self.student_channels is not None and c_s != self.student_channels:
            raise ValueError(
                f'student maps have {c_s} channels, the loss was built for '
                f'student_channels={self.student_channels}'
            )
        return (student if self.align is None else self.align(student)), c_s


@MODELS.register_module()
class ChannelWiseDivergence(_AlignedMapLoss):
    """Channel-wise distillation, see :func:`channel_wise_divergence` (G2SD seg SD).

    As in the official ``ChannelWiseDivergence`` (``G2SD_seg_dis/.../losses/cwd.py``), a
    trainable 1x1 conv aligns the student to the teacher when ``student_channels`` and
    ``teacher_channels`` differ, and the loss is divided by N times the student's channel
    count *before* alignment. Give the channel counts here rather than a wrapper ``adapter``
    (an adapter in front of the loss would make the normaliser the teacher's count).
    Shapes: student (N, C_s, H, W), teacher (N, C_t, H, W).

    Args:
        tau: Temperature (G2SD: 1).
        loss_weight: Multiplier of the loss (G2SD: 3).
        form: ``'ce'`` (official cross-entropy, default) or ``'kl'`` (KL divergence).
        student_channels: C_s; with ``teacher_channels``, builds the align conv when they
            differ. ``None``: no alignment, both maps must have the same channels.
        teacher_channels: C_t.
    """

    def __init__(
        self,
        tau: float = 1.0,
        loss_weight: float = 1.0,
        form: Literal['ce', 'kl'] = 'ce',
        student_channels: int | None = None,
        teacher_channels: int | None = None,
    ) -> None:
        super().__init__(loss_weight, student_channels, teacher_channels)
        self.tau = _check_temperature(tau, 'tau')
        self.form = _check_form(form, _CWD_FORMS, 'ChannelWiseDivergence')

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(N, C_s, H, W) student and (N, C_t, H, W) teacher maps -> weighted scalar loss."""
        student, c_s = self._aligned(student)
        return self.loss_weight * channel_wise_divergence(
            student, teacher, self.tau, self.form, student_channels=c_s
        )

    def extra_repr(self) -> str:
        return f'tau={self.tau}, form={self.form!r}, {super().extra_repr()}'


@MODELS.register_module()
class PixelWiseKLDivergence(_AlignedMapLoss):
    """Pixel-wise KL over the classes, see :func:`pixel_wise_kl` (G2SD seg SD alternative).

    The official ``KLDivergence`` (``G2SD_seg_dis/src/distillation/losses/kl.py``,
    ``configs/distill/distill_kl.py``): ``loss_weight * tau^2 * kl_div(log_softmax(S / tau),
    softmax(T / tau), reduction)`` with the softmax over the channels of each pixel, the
    optional 1x1 align conv of the official losses in front (the ``'mean'`` normaliser then
    counts the teacher's channels, the aligned student's). Shapes: student (N, C_s, H, W),
    teacher (N, C_t, H, W).

    Args:
        tau: Temperature > 0.
        loss_weight: Multiplier of the loss.
        reduction: ``'mean'`` (official default, / (N C H W)), ``'batchmean'`` (/ N) or
            ``'sum'``.
        student_channels: C_s; with ``teacher_channels``, builds the align conv when they
            differ. ``None``: no alignment, both maps must have the same channels.
        teacher_channels: C_t.
    """

    def __init__(
        self,
        tau: float = 1.0,
        loss_weight: float = 1.0,
        reduction: Literal['mean', 'batchmean', 'sum'] = 'mean',
        student_channels: int | None = None,
        teacher_channels: int | None = None,
    ) -> None:
        super().__init__(loss_weight, student_channels, teacher_channels)
        self.tau = _check_temperature(tau, 'tau')
        self.reduction = _check_form(reduction, KL_REDUCTIONS, 'PixelWiseKLDivergence', 'reduction')

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(N, C_s, H, W) student and (N, C_t, H, W) teacher maps -> weighted scalar loss."""
        student, _ = self._aligned(student)
        return self.loss_weight * pixel_wise_kl(student, teacher, self.tau, self.reduction)

    def extra_repr(self) -> str:
        return f'tau={self.tau}, reduction={self.reduction!r}, {super().extra_repr()}'


@MODELS.register_module()
class MaskedFeatureMSELoss(_WeightedLoss):
    """FRS masked feature loss, see :func:`masked_feature_mse` (G2SD det SD, weight 0.001).

    Args:
        loss_weight: Multiplier of the loss.
    """

    def forward(
        self,
        student: Levels,
        teacher: Levels,
        mask: Levels | None = None,
        mask_logits: Levels | None = None,
    ) -> torch.Tensor:
        """(N, C, H, W) features and a mask (or teacher objectness logits) -> scalar loss.

        Lists of per-level tensors give the sum of the per-level normalised terms.
        """
        return self.loss_weight * masked_feature_mse(student, teacher, mask, mask_logits)


@MODELS.register_module()
class MaskedBCELoss(_WeightedLoss):
    """FRS masked objectness BCE, see :func:`masked_bce_loss` (G2SD det SD, weight 0.1).

    Args:
        loss_weight: Multiplier of the loss.
        form: ``'prob'`` (official BCE on sigmoid probabilities, logs clamped at -100;
            default, used by the det configs) or ``'logits'`` (BCE with logits).
    """

    def __init__(self, loss_weight: float = 1.0, form: Literal['prob', 'logits'] = 'prob') -> None:
        super().__init__(loss_weight)
        self.form = _check_form(form, _BCE_FORMS, 'MaskedBCELoss')

    def forward(self, student: Levels, teacher: Levels, mask: Levels | None = None) -> torch.Tensor:
        """(N, A, H, W) objectness logits (and an optional mask) -> scalar loss.

        Lists of per-level tensors give the sum of the per-level normalised terms.
        """
        return self.loss_weight * masked_bce_loss(student, teacher, mask, form=self.form)

    def extra_repr(self) -> str:
        return f'form={self.form!r}, {super().extra_repr()}'
