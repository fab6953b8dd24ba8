"""Frozen-feature probes of pre-trained encoders (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771).

The demo and the reproduction measure a pre-trained (generic-distilled) encoder without
fine-tuning it: a weighted k-NN on its L2-normalised features (the DINO protocol) and a
linear softmax probe. :func:`raw_pixel_features` is the baseline both are compared with: the
same probe on the flattened normalised pixels, so a table shows what representation learning
adds over the input itself.

Shapes: images (B, C, H, W); token features (B, N, C); pooled / flattened features (B, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLS = ('avg', 'tokens')


@torch.no_grad()
def extract_features(encoder: nn.Module, x: Tensor, batch: int = 500, pool: str = 'avg') -> Tensor:
    """L2-normalised features of ``x`` (N, D) with ``encoder`` in eval mode, without grad.

    Args:
        encoder: A ``VisionTransformer(num_classes=0, global_pool='avg')`` (e.g. from
            ``tools/demo.build_encoder``).
        x: Images (N, C, H, W).
        batch: Images per forward pass.
        pool: ``'avg'``: the encoder's output (mean of the normed patch tokens, D = C);
            ``'tokens'``: the normed patch tokens (N, L, C) flattened to D = L * C (needs the
            encoder's ``forward_features`` and ``norm``).

    Raises:
        ValueError: ``pool`` is not one of :data:`POOLS` or ``batch`` < 1.
    """
    if pool not in POOLS:
        raise ValueError(f'pool must be one of {POOLS}, got {pool!r}')
    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch}')
    encoder.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        if pool == 'avg':
            out.append(encoder(xb))
        else:
            tokens = encoder.forward_features(xb)  # (B, N, C), normed
            prefix = getattr(encoder, 'num_lead_tokens', getattr(encoder, 'num_prefix_tokens', 1))
            out.append(tokens[:, prefix:].flatten(1))
    return F.normalize(torch.cat(out), dim=1)


def raw_pixel_features(x: Tensor) -> Tensor:
    """Flattened images (N, C*H*W), L2-normalised: the probes' no-learning baseline."""
    return F.normalize(x.flatten(1).float(), dim=1)


def knn_accuracy(
    train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20, t: float = 0.07
) -> float:
    """Weighted k-NN top-1 (DINO protocol): votes exp(cos / t) of the k nearest.

    Args:
        train_f: L2-normalised bank features (N, D).
        train_y: Bank labels (N,).
        test_f: L2-normalised query features (M, D).
        test_y: Query labels (M,).
        k: Neighbours (clipped to N).
        t: Temperature of the votes.

    Returns:
        Top-1 accuracy in [0, 1].
    """
    sim = test_f @ train_f.T
    top, idx = sim.topk(min(k, len(train_f)), dim=1)
    votes = torch.zeros(len(test_f), int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[idx], (top / t).exp())
    return (votes.argmax(1) == test_y).float().mean().item()


def linear_probe_accuracy(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> float:
    """Top-1 of a softmax regression trained full-batch on frozen features (deterministic).

    The features are standardised with the training set's per-dimension mean / std, then a
    linear layer (weights N(0, 0.01) from ``seed``, zero bias) is trained with Adam for
    ``epochs`` full-batch steps.

    Args:
        train_f: Training features (N, D).
        train_y: Training labels (N,).
        test_f: Test features (M, D).
        test_y: Test labels (M,).
        epochs: Full-batch optimisation steps.
        lr: Adam learning rate.
        weight_decay: L2 penalty on the weights.
        seed: Seed of the (local) generator; the result depends only on the inputs and it.

    Returns:
        Top-1 accuracy in [0, 1].

    Raises:
        ValueError: ``epochs`` < 1 or the feature dims differ.
    """
    if epochs < 1:
        raise ValueError(f'epochs must be >= 1, got {epochs}')
    if train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f'feature dims differ: {train_f.shape[1]} vs {test_f.shape[1]}')
    gen = torch.Generator().manual_seed(seed)
    mu = train_f.mean(0, keepdim=True)
    sd = train_f.std(0, keepdim=True).clamp_min(1e-6)
    xtr = ((train_f - mu) / sd).float()
    xte = ((test_f - mu) / sd).float()
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Linear(xtr.shape[1], n_cls)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(head(xtr), train_y).backward()
            opt.step()
    with torch.no_grad():
        return (head(xte).argmax(1) == test_y).float().mean().item()
