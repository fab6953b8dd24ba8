"""Distillation losses vs independent computations (numpy float64 loops, official formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from g2sd.distill import losses as L
from g2sd.registry import MODELS

S = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, -0.5, 3.0, 1.0], [0.0, 0.0, 0.0, 4.0]])
T = torch.tensor([[0.0, 5.0, 1.0, 0.0], [1.0, 0.0, 2.0, -2.0], [3.0, 1.0, -1.0, 0.5]])
LABELS = torch.tensor([0, 2, 3])


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_hard_kd_literal_value() -> None:
    # Student uniform over 2 classes -> CE = log 2 whatever the teacher's top class.
    s, t = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    assert L.hard_kd_loss(s, t).item() == pytest.approx(math.log(2.0))


def test_hard_kd_vs_numpy() -> None:
    s, t = S.double().numpy(), T.double().numpy()
    y = t.argmax(-1)  # [1, 2, 0]
    ref = -np.mean([np_log_softmax(s)[b, y[b]] for b in range(len(y))])
    assert L.hard_kd_loss(S, T).item() == pytest.approx(ref, rel=1e-6)
    assert L.HardKDLoss(loss_weight=0.5)(S, T).item() == pytest.approx(0.5 * ref, rel=1e-6)


@pytest.mark.parametrize('temp', [1.0, 4.0])
def test_soft_kd_vs_numpy(temp: float) -> None:
    s, t = S.double().numpy() / temp, T.double().numpy() / temp
    ls, lt = np_log_softmax(s), np_log_softmax(t)
    ref = 0.0
    for b in range(s.shape[0]):
        ref += sum(math.exp(lt[b, k]) * (lt[b, k] - ls[b, k]) for k in range(s.shape[1]))
    ref = ref / s.shape[0] * temp * temp
    assert L.soft_kd_loss(S, T, temp).item() == pytest.approx(ref, rel=1e-5)
    assert L.SoftKDLoss(temperature=temp, loss_weight=2.0)(S, T).item() == pytest.approx(
        2 * ref, rel=1e-5
    )
    assert L.soft_kd_loss(S, S, temp).item() == pytest.approx(0.0, abs=1e-6)


def official_nkd(logit_s, logit_t, gt_label, temp=1.0, alpha=1.0):
    """G2SD's NKD_loss.py forward, transcribed literally (masking with -1000)."""
    if len(gt_label.size()) > 1:
        label = torch.max(gt_label, dim=1, keepdim=True)[1]
    else:
        label = gt_label.view(len(gt_label), 1)
    y_i = F.softmax(logit_s, dim=1)
    t_i = F.softmax(logit_t, dim=1)
    y_t = torch.gather(y_i, 1, label)
    w_t = torch.gather(t_i, 1, label).detach()
    mask = torch.zeros_like(logit_s).scatter_(1, label, 1).bool()
    logit_s = logit_s - 1000 * mask
    logit_t = logit_t - 1000 * mask
    T_i = F.softmax(logit_t / temp, dim=1)
    S_i = F.softmax(logit_s / temp, dim=1)
    T_t = torch.gather(T_i, 1, label)
    S_t = torch.gather(S_i, 1, label)
    np_t = T_i / (1 - T_t)
    np_s = S_i / (1 - S_t)
    np_t[T_i == T_t] = 0
    np_s[T_i == T_t] = 1
    soft_loss = -(w_t * torch.log(y_t)).mean()
    distributed_loss = (np_t * torch.log(np_s)).sum(dim=1).mean()
    distributed_loss = -alpha * (temp**2) * distributed_loss
    return soft_loss + distributed_loss


@pytest.mark.parametrize('temp,alpha', [(1.0, 1.0), (2.0, 1.5)])
def test_nkd_vs_official_formula(temp: float, alpha: float) -> None:
    s, t = S.double(), T.double()
    ref = official_nkd(s, t, LABELS, temp, alpha).item()
    assert L.nkd_loss(s, t, LABELS, temp, alpha).item() == pytest.approx(ref, rel=1e-6)
    # Soft (mixup) targets: the label is their argmax.
    soft = F.one_hot(LABELS, 4).double() * 0.7 + 0.075
    ref_soft = official_nkd(s, t, soft, temp, alpha).item()
    assert L.nkd_loss(s, t, soft, temp, alpha).item() == pytest.approx(ref_soft, rel=1e-6)
    mod = L.NKDLoss(temperature=temp, alpha=alpha, loss_weight=0.5)
    assert mod.requires_gt
    assert mod(s, t, LABELS).item() == pytest.approx(0.5 * ref, rel=1e-6)


def test_nkd_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match='gt must be'):
        L.nkd_loss(S, T, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize('kind', ['mse', 'smooth_l1', 'l1'])
def test_feature_loss_vs_numpy(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g) * 2
    d = (a - b).double().numpy()
    beta = 1.5
    if kind == 'mse':
        ref = (d**2).mean()
    elif kind == 'l1':
        ref = np.abs(d).mean()
    else:
        ad = np.abs(d)
        ref = np.where(ad < beta, 0.5 * d**2 / beta, ad - 0.5 * beta).mean()
    assert L.feature_loss(a, b, kind, beta).item() == pytest.approx(ref, rel=1e-5)
    assert L.FeatureLoss(kind, beta, loss_weight=3.0)(a, b).item() == pytest.approx(
        3 * ref, rel=1e-5
    )


@pytest.mark.parametrize('tau', [1.0, 2.0])
def test_cwd_kl_form_vs_numpy(tau: float) -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    sn, tn = s.double().numpy(), t.double().numpy()
    total = 0.0
    for n in range(2):
        for c in range(3):
            ls = np_log_softmax(sn[n, c].reshape(-1) / tau)
            lt = np_log_softmax(tn[n, c].reshape(-1) / tau)
            total += float((np.exp(lt) * (lt - ls)).sum())
    ref = total * tau * tau / (2 * 3)
    assert L.channel_wise_divergence(s, t, tau, form='kl').item() == pytest.approx(ref, rel=1e-5)
    mod = L.ChannelWiseDivergence(tau, loss_weight=3.0, form='kl')
    assert mod(s, t).item() == pytest.approx(3 * ref, rel=1e-5)
    assert L.channel_wise_divergence(t, t, tau, form='kl').item() == pytest.approx(0.0, abs=1e-6)


def test_masked_feature_mse_and_bce_vs_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    os_, ot = torch.randn(2, 3, 3, 3, generator=g), torch.randn(2, 3, 3, 3, generator=g)
    m = 1 / (1 + np.exp(-ot.double().numpy()))
    mask = m.max(axis=1)  # (N, H, W): max over anchors of sigmoid(teacher objectness)
    sq = ((fs - ft).double().numpy() ** 2).sum(axis=1)
    ref_feat = (sq * mask).sum() / mask.sum()
    assert L.masked_feature_mse(fs, ft, mask_logits=ot).item() == pytest.approx(ref_feat, rel=1e-5)
    assert L.masked_feature_mse(fs, ft, mask=torch.from_numpy(mask)).item() == pytest.approx(
        ref_feat, rel=1e-5
    )
    p = 1 / (1 + np.exp(-os_.double().numpy()))
    q = m
    bce = -(q * np.log(p) + (1 - q) * np.log(1 - p))
    ref_bce = (bce * mask[:, None]).sum() / mask.sum()
    assert L.masked_bce_loss(os_, ot).item() == pytest.approx(ref_bce, rel=1e-5)
    # On ordinary logits the with-logits form agrees with the official one.
    assert L.masked_bce_loss(os_, ot, form='logits').item() == pytest.approx(ref_bce, rel=1e-5)
    assert L.MaskedBCELoss(loss_weight=0.1)(os_, ot).item() == pytest.approx(
        0.1 * ref_bce, rel=1e-5
    )
    assert L.MaskedFeatureMSELoss(loss_weight=0.001)(fs, ft, mask_logits=ot).item() == (
        pytest.approx(0.001 * ref_feat, rel=1e-5)
    )


def test_masked_loss_needs_one_mask() -> None:
    f = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match='exactly one'):
        L.masked_feature_mse(f, f)


def test_shape_and_argument_errors() -> None:
    with pytest.raises(ValueError, match='same shape'):
        L.hard_kd_loss(S, T[:, :3])
    with pytest.raises(ValueError, match='temperature'):
        L.SoftKDLoss(temperature=0.0)
    with pytest.raises(ValueError, match='loss_weight'):
        L.HardKDLoss(loss_weight=-1.0)
    with pytest.raises(ValueError, match='N, C, H, W'):
        L.channel_wise_divergence(S, T)


def test_gradient_reaches_student_only() -> None:
    s, t = S.clone().requires_grad_(True), T.clone().requires_grad_(True)
    L.soft_kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_registered_and_named() -> None:
    for name in (
        'HardKDLoss',
        'SoftKDLoss',
        'NKDLoss',
        'FeatureLoss',
        'ChannelWiseDivergence',
        'MaskedFeatureMSELoss',
        'MaskedBCELoss',
    ):
        assert MODELS.get(f'g2sd.{name}') is getattr(L, name)
    assert L.loss_name('g2sd.HardKDLoss') == 'hard_kd'
    assert L.loss_name(L.NKDLoss) == 'nkd'
    assert L.loss_name(L.ChannelWiseDivergence(1.0)) == 'channel_wise_divergence'
    assert L.loss_name('g2sd.MaskedFeatureMSELoss') == 'masked_feature_mse'


# ------------------------------------------------------------- official CWD and FRS forms
def official_cwd(preds_s, preds_t, align, tau, weight):
    """G2SD_seg_dis/src/distillation/losses/cwd.py ChannelWiseDivergence.forward, literally."""
    n, c, w, h = preds_s.shape
    if align is not None:
        preds_s = align(preds_s)
    softmax_pred_t = F.softmax(preds_t.reshape(-1, w * h) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(-softmax_pred_t * logsoftmax(preds_s.reshape(-1, w * h) / tau)) * (tau**2)
    return weight * loss / (c * n)


def test_cwd_literal_small_example() -> None:
    # One map of 2 positions: p_s = (1/2, 1/2), p_t = (1/4, 3/4).
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([[[[0.0, math.log(3.0)]]]])
    # Official cross-entropy: -(1/4 + 3/4) log(1/2) = log 2;
    # KL = log 2 - H(p_t) = 3/4 log 3 - log 2.
    assert L.channel_wise_divergence(s, t).item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert L.channel_wise_divergence(s, t, form='kl').item() == pytest.approx(
        0.75 * math.log(3.0) - math.log(2.0), rel=1e-5
    )
    assert L.ChannelWiseDivergence(loss_weight=3.0)(s, t).item() == pytest.approx(
        3 * math.log(2.0), rel=1e-6
    )


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_cwd_default_is_the_official_cross_entropy(tau: float) -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2
    ref = official_cwd(s, t, None, tau, 3.0).item()
    mod = L.ChannelWiseDivergence(tau, loss_weight=3.0)
    assert mod.form == 'ce' and mod.align is None
    assert mod(s, t).item() == pytest.approx(ref, rel=1e-6)
    # KL differs from the official value by the teacher's entropy: tau^2 / (N C) sum H(p_t).
    p_t = F.softmax(t.flatten(2) / tau, dim=-1)
    entropy = -(p_t * p_t.log()).sum().item() * tau * tau / (2 * 3)
    kl = L.channel_wise_divergence(s, t, tau, form='kl').item()
    assert kl == pytest.approx(ref / 3.0 - entropy, rel=1e-6)


def test_cwd_divides_by_student_channels_before_alignment() -> None:
    # Student constant over space -> after any 1x1 conv every channel is uniform over the
    # H*W = 6 positions, so each of the 3 teacher channels costs log 6 whatever the teacher.
    # Official: 3 log 6 / (N * C_student) = 3 log 6 / 2 (the aligned count would give log 6).
    mod = L.ChannelWiseDivergence(student_channels=2, teacher_channels=3)
    assert isinstance(mod.align, torch.nn.Conv2d) and mod.align.kernel_size == (1, 1)
    s = torch.full((1, 2, 2, 3), 0.7)
    t = torch.randn(1, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    assert mod(s, t).item() == pytest.approx(1.5 * math.log(6.0), rel=1e-5)
    # Random maps, value and gradients (student and align conv) vs the official forward.
    g = torch.Generator().manual_seed(6)
    s = torch.randn(2, 2, 3, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, generator=g)
    ours = mod(s, t)
    (gs, gw) = torch.autograd.grad(ours, (s, mod.align.weight))
    ref = official_cwd(s, t, mod.align, 1.0, 1.0)
    (rs, rw) = torch.autograd.grad(ref, (s, mod.align.weight))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gs, rs)
    torch.testing.assert_close(gw, rw)
    # Equal channel counts: no align conv (as the official code).
    assert L.ChannelWiseDivergence(student_channels=4, teacher_channels=4).align is None


def test_cwd_argument_errors() -> None:
    with pytest.raises(ValueError, match="form must be one of \\('ce', 'kl'\\), got 'js'"):
        L.ChannelWiseDivergence(form='js')
    with pytest.raises(ValueError, match='both student_channels and teacher_channels'):
        L.ChannelWiseDivergence(student_channels=2)
    with pytest.raises(ValueError, match='student_channels must be an int >= 1, got 0'):
        L.ChannelWiseDivergence(student_channels=0, teacher_channels=3)
    mod = L.ChannelWiseDivergence(student_channels=2, teacher_channels=3)
    with pytest.raises(ValueError, match='have 3 channels.*student_channels=2'):
        mod(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))


def test_masked_bce_official_form_on_saturated_logits() -> None:
    # Student logit 17 (sigmoid rounds to 1.0 in fp32), teacher logit 0 (target 0.5), mask 0.5:
    # official BCE on probabilities = -(0.5 log 1 + 0.5 max(log 0, -100)) = 50;
    # with logits = 17 (1 - 0.5) + log(1 + e^-17) = 8.5 (in fp32).
    s = torch.full((1, 1, 1, 1), 17.0)
    t = torch.zeros(1, 1, 1, 1)
    assert L.masked_bce_loss(s, t).item() == pytest.approx(50.0, rel=1e-6)
    assert L.masked_bce_loss(s, t, form='prob').item() == pytest.approx(50.0, rel=1e-6)
    assert L.masked_bce_loss(s, t, form='logits').item() == pytest.approx(8.5, rel=1e-6)
    assert L.MaskedBCELoss(loss_weight=0.1)(s, t).item() == pytest.approx(5.0, rel=1e-6)
    assert L.MaskedBCELoss(0.1, form='logits')(s, t).item() == pytest.approx(0.85, rel=1e-6)
    with pytest.raises(ValueError, match="form must be one of \\('prob', 'logits'\\)"):
        L.MaskedBCELoss(form='sigmoid')


def test_masked_bce_official_form_runs_under_autocast() -> None:
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(1, 3, 2, 2, generator=g), torch.randn(1, 3, 2, 2, generator=g)
    ref = L.masked_bce_loss(s, t).item()
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        out = L.masked_bce_loss(s, t)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref, rel=1e-6)
