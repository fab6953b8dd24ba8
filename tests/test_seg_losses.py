"""Segmentation SD losses (G2SD seg SD): CWD and the official pixel-wise KL alternative.

The expected values are written out again here with numpy and explicit loops, not with the
code under test:

* CWD (``G2SD_seg_dis/src/distillation/losses/cwd.py``):
  ``L = w tau^2 / (N C_s) sum_{n, c} sum_{hw} -p^T log p^S``, softmax over the H W positions of
  each (n, c), C_s the student's channels before the 1x1 align conv;
* KL (``G2SD_seg_dis/src/distillation/losses/kl.py``):
  ``L = w tau^2 kl_div(log_softmax(S / tau, 1), softmax(T / tau, 1), reduction)``, softmax over
  the channels of each pixel; ``'mean'`` / (N C H W), ``'batchmean'`` / N, ``'sum'``.

Maps are non-square (2 x 5 x 3 x 7) so that a transposed H / W would show.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import g2sd.distill  # noqa: F401  (registers the losses)
from g2sd.distill import ChannelWiseDivergence, PixelWiseKLDivergence, pixel_wise_kl
from g2sd.distill.losses import channel_wise_divergence
from g2sd.registry import MODELS

SHAPE = (2, 5, 3, 7)  # N, C, H, W


def _maps(seed: int, shape: tuple[int, ...] = SHAPE, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _log_softmax(v: np.ndarray) -> np.ndarray:
    m = v.max()
    return v - m - math.log(np.exp(v - m).sum())


def cwd_loops(s: torch.Tensor, t: torch.Tensor, tau: float, w: float, c_norm: int | None = None):
    """w tau^2 / (N C) sum_{n, c, hw} -p_t log p_s, one (n, c) map at a time."""
    s, t = s.detach().double().numpy(), t.detach().double().numpy()
    n_, c_, h_, w_ = s.shape
    total = 0.0
    for n in range(n_):
        for c in range(c_):
            p_t = _softmax(t[n, c].reshape(h_ * w_) / tau)
            log_p_s = _log_softmax(s[n, c].reshape(h_ * w_) / tau)
            for hw in range(h_ * w_):
                total += -p_t[hw] * log_p_s[hw]
    return w * tau * tau * total / (n_ * (c_norm or c_))


def entropy_loops(t: torch.Tensor, tau: float, w: float) -> float:
    """w tau^2 / (N C) sum_{n, c} H(p_t): the CWD value of a student equal to its teacher."""
    t = t.detach().double().numpy()
    n_, c_, h_, w_ = t.shape
    total = 0.0
    for n in range(n_):
        for c in range(c_):
            p = _softmax(t[n, c].reshape(-1) / tau)
            total += -(p * np.log(p)).sum()
    return w * tau * tau * total / (n_ * c_)


def kl_loops(s: torch.Tensor, t: torch.Tensor, tau: float, w: float, reduction: str) -> float:
    """w tau^2 sum_{n, h, w} KL_c(p_t || p_s), normalised as ``reduction``, pixel by pixel."""
    s, t = s.detach().double().numpy(), t.detach().double().numpy()
    n_, c_, h_, w_ = s.shape
    total = 0.0
    for n in range(n_):
        for y in range(h_):
            for x in range(w_):
                p_t = _softmax(t[n, :, y, x] / tau)
                log_p_s = _log_softmax(s[n, :, y, x] / tau)
                total += (p_t * (np.log(p_t) - log_p_s)).sum()
    div = {'mean': n_ * c_ * h_ * w_, 'batchmean': n_, 'sum': 1}[reduction]
    return w * tau * tau * total / div


def conv1x1_np(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv written as an einsum over the channels (no F.conv2d)."""
    wgt = conv.weight.detach().double()[:, :, 0, 0]  # (C_t, C_s)
    out = torch.einsum('oc,nchw->nohw', wgt, x.detach().double())
    return out + conv.bias.detach().double()[None, :, None, None]


# ------------------------------------------------------------------------------ CWD
@pytest.mark.parametrize('tau', [1.0, 2.0])
def test_cwd_equals_the_loops(tau: float) -> None:
    s, t = _maps(1), _maps(2)
    ref1 = cwd_loops(s, t, tau, 1.0)
    assert channel_wise_divergence(s, t, tau).item() == pytest.approx(ref1, rel=1e-6)
    loss = ChannelWiseDivergence(tau=tau, loss_weight=3.0)
    assert loss(s, t).item() == pytest.approx(cwd_loops(s, t, tau, 3.0), rel=1e-6)
    assert loss(s, t).item() == pytest.approx(3.0 * ref1, rel=1e-6)  # the weight scales
    assert loss(s, t).dtype == torch.float32  # fp32 whatever the input


def test_cwd_of_the_teacher_itself_is_its_entropy_not_zero() -> None:
    t = _maps(3)
    got = ChannelWiseDivergence(tau=1.0, loss_weight=3.0)(t.clone(), t).item()
    ref = entropy_loops(t, 1.0, 3.0)
    assert ref > 1.0  # 21 positions: entropies up to log 21 ~ 3
    assert got == pytest.approx(ref, rel=1e-6)
    # the KL option removes exactly this constant
    kl = ChannelWiseDivergence(tau=1.0, loss_weight=3.0, form='kl')(t.clone(), t).item()
    assert kl == pytest.approx(0.0, abs=1e-9)


def test_cwd_align_conv_normalises_by_the_student_channels() -> None:
    torch.manual_seed(0)
    loss = ChannelWiseDivergence(tau=1.0, loss_weight=3.0, student_channels=3, teacher_channels=5)
    assert loss.align is not None and tuple(loss.align.weight.shape) == (5, 3, 1, 1)
    s = _maps(4, (2, 3, 3, 7)).float()
    t = _maps(5).float()
    aligned = conv1x1_np(s, loss.align)
    ref = cwd_loops(aligned, t, 1.0, 3.0, c_norm=3)
    assert loss(s, t).item() == pytest.approx(ref, rel=1e-5)
    # the teacher's count (5) would give 3/5 of it
    assert ref == pytest.approx(cwd_loops(aligned, t, 1.0, 3.0) * 5 / 3, rel=1e-6)
    with pytest.raises(ValueError, match='student_channels=3'):
        loss(_maps(4).float(), t)


# ------------------------------------------------------------------------------- KL
@pytest.mark.parametrize('reduction', ['mean', 'batchmean', 'sum'])
@pytest.mark.parametrize('tau', [1.0, 2.0])
def test_kl_equals_the_per_pixel_loops(reduction: str, tau: float) -> None:
    s, t = _maps(6), _maps(7)
    ref = kl_loops(s, t, tau, 3.0, reduction)
    loss = PixelWiseKLDivergence(tau=tau, loss_weight=3.0, reduction=reduction)
    assert loss(s, t).item() == pytest.approx(ref, rel=1e-6)
    assert pixel_wise_kl(s, t, tau, reduction).item() == pytest.approx(ref / 3.0, rel=1e-6)
    # the official expression, literally (F.kl_div on probabilities, not log-probabilities)
    with warnings.catch_warnings():  # torch warns that 'mean' is not 'batchmean'
        warnings.simplefilter('ignore', UserWarning)
        official = (
            3.0
            * tau**2
            * F.kl_div(
                F.log_softmax(s / tau, dim=1), F.softmax(t / tau, dim=1), reduction=reduction
            )
        )
    assert loss(s, t).item() == pytest.approx(official.item(), rel=1e-6)


def test_kl_default_is_the_official_mean_and_zero_on_the_teacher() -> None:
    loss = PixelWiseKLDivergence()
    assert loss.reduction == 'mean' and loss.tau == 1.0 and loss.align is None
    s, t = _maps(8), _maps(9)
    assert loss(s, t).item() == pytest.approx(kl_loops(s, t, 1.0, 1.0, 'mean'), rel=1e-6)
    assert loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-9)
    assert loss(s.half(), t.half()).dtype == torch.float32


def test_kl_align_conv() -> None:
    torch.manual_seed(1)
    loss = PixelWiseKLDivergence(loss_weight=2.0, student_channels=3, teacher_channels=5)
    assert tuple(loss.align.weight.shape) == (5, 3, 1, 1)
    s, t = _maps(10, (2, 3, 3, 7)).float(), _maps(11).float()
    ref = kl_loops(conv1x1_np(s, loss.align), t, 1.0, 2.0, 'mean')  # / (N C_t H W)
    assert loss(s, t).item() == pytest.approx(ref, rel=1e-5)
    assert PixelWiseKLDivergence(student_channels=5, teacher_channels=5).align is None


def test_kl_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'none'"):
        PixelWiseKLDivergence(reduction='none')
    with pytest.raises(ValueError, match='tau'):
        PixelWiseKLDivergence(tau=0.0)
    with pytest.raises(ValueError, match='teacher_channels'):
        PixelWiseKLDivergence(student_channels=3)
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'):
        pixel_wise_kl(_maps(1), _maps(2, (2, 5, 3, 6)))


def test_registered_and_built_from_config() -> None:
    assert MODELS.get('g2sd.PixelWiseKLDivergence') is PixelWiseKLDivergence
    loss = MODELS.build(dict(type='g2sd.PixelWiseKLDivergence', tau=2.0, reduction='sum'))
    assert isinstance(loss, PixelWiseKLDivergence) and loss.reduction == 'sum'
    assert 'reduction' in repr(loss)


# -------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    'make',
    [
        lambda: ChannelWiseDivergence(loss_weight=3.0, student_channels=3, teacher_channels=5),
        lambda: PixelWiseKLDivergence(loss_weight=3.0, student_channels=3, teacher_channels=5),
        lambda: ChannelWiseDivergence(loss_weight=3.0),
        lambda: PixelWiseKLDivergence(loss_weight=3.0),
    ],
)
def test_gradients_reach_the_student_only(make) -> None:  # noqa: ANN001
    loss = make()
    c_s = 3 if loss.align is not None else 5
    s = _maps(12, (2, c_s, 3, 7)).float().requires_grad_(True)
    t = _maps(13).float().requires_grad_(True)
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # teacher detached
    if loss.align is not None:
        assert loss.align.weight.grad.abs().sum() > 0
