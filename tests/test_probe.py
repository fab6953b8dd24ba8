"""Tests of g2sd.analysis.probe (frozen-feature probes; G2SD, arXiv 2302.14771)."""

from __future__ import annotations

import pytest
import torch

from g2sd.analysis.probe import (
    extract_features,
    knn_accuracy,
    linear_probe_accuracy,
    raw_pixel_features,
)
from g2sd.models import VisionTransformer


def test_raw_pixel_features_flatten_and_normalise() -> None:
    x = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 2.0]]]])  # (2, 1, 1, 2)
    f = raw_pixel_features(x)
    assert torch.allclose(f, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_knn_accuracy_hand_example() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    test = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    # k=1: nearest bank item decides; the last query is labelled 0 on purpose (wrong).
    assert knn_accuracy(bank, y, test, torch.tensor([0, 1, 0]), k=1) == pytest.approx(2 / 3)


def test_linear_probe_separable_and_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    a = linear_probe_accuracy(x[:100], y[:100], x[100:], y[100:], epochs=50, lr=0.1, seed=1)
    b = linear_probe_accuracy(x[:100], y[:100], x[100:], y[100:], epochs=50, lr=0.1, seed=1)
    assert a == b
    assert a >= 0.9


def test_linear_probe_rejects_bad_epochs() -> None:
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match='epochs'):
        linear_probe_accuracy(x, y, x, y, epochs=0)


def test_extract_features_shapes() -> None:
    enc = VisionTransformer(
        img_size=8,
        patch_size=4,
        in_chans=1,
        embed_dim=8,
        depth=1,
        num_heads=2,
        num_classes=0,
        global_pool='avg',
        fc_norm=False,
    )
    x = torch.randn(3, 1, 8, 8)
    f = extract_features(enc, x, batch=2)
    t = extract_features(enc, x, pool='tokens')
    assert f.shape == (3, 8) and t.shape == (3, 4 * 8)
    assert torch.allclose(t.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match='pool'):
        extract_features(enc, x, pool='cls')
