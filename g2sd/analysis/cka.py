"""Linear CKA between the blocks of two ViTs (representation similarity with the teacher).

Centred kernel alignment (Kornblith et al., "Similarity of Neural Network Representations
Revisited", ICML 2019) with a linear kernel: for features X (n, p) and Y (n, q) of the same n
examples, centred over the examples,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

which equals HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for K = X X^T, L = Y Y^T. It lies in
[0, 1], is 1 for X = Y and is invariant to orthogonal transforms and isotropic scaling of
either side (not to other invertible linear maps), so blocks of different widths (a 48-d
student, a 96-d teacher) compare directly. The G2SD paper (Huang et al., CVPR 2023,
arXiv 2302.14771) and D-MAE (Bai et al., "Masked Autoencoders Enable Efficient Knowledge
Distillers", CVPR 2023) compare the token representations of every student block with every
teacher block as such a heat map; :func:`block_features` gives those features of the one ViT
(:class:`g2sd.models.VisionTransformer`) and :func:`cka_matrix` the (student, teacher) matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

TOKENS = ('mean', 'all')


def _check_features(x: torch.Tensor, name: str) -> None:
    """Raise TypeError / ValueError unless ``x`` is a finite (n, p) tensor with n >= 2."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.ndim != 2:
        raise ValueError(f'{name} must be 2-D (n, features), got shape {tuple(x.shape)}')
    if x.shape[0] < 2:
        raise ValueError(f'{name} needs n >= 2 examples (rows), got shape {tuple(x.shape)}')
    if x.shape[1] < 1:
        raise ValueError(f'{name} needs at least one feature (column), got {tuple(x.shape)}')
    if x.is_complex():
        raise TypeError(f'{name} must be real, got dtype {x.dtype}')
    if not torch.isfinite(x).all():
        raise ValueError(f'{name} has non-finite values (nan / inf)')


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Float64 copy of ``x`` (n, p) with every column's mean over the n rows removed."""
    x = x.detach().to(dtype=torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _self_norm(xc: torch.Tensor, name: str) -> torch.Tensor:
    """||X^T X||_F of centred features (n, p); ValueError when it is 0 (constant features)."""
    norm = torch.linalg.matrix_norm(xc.T @ xc)
    if norm <= 0:
        raise ValueError(f'{name} is constant over the examples; CKA is undefined')
    return norm


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same examples, computed in float64.

    Args:
        x: Features (n, p), one row per example.
        y: Features (n, q) of the same n examples, in the same order.

    Returns:
        CKA in [0, 1].

    Raises:
        TypeError: An input is not a real torch tensor.
        ValueError: An input is not 2-D, has n < 2 rows or non-finite values, the row
            counts differ, or a side is constant over the examples.
    """
    _check_features(x, 'x')
    _check_features(y, 'y')
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f'x and y must have the same number of rows (examples), got {x.shape[0]} and '
            f'{y.shape[0]}'
        )
    xc, yc = _centre(x), _centre(y.to(x.device))
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    return float(cross / (_self_norm(xc, 'x') * _self_norm(yc, 'y')))


def cka_matrix(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear CKA of every representation in ``feats_a`` with every one in ``feats_b``.

    Each side is centred and its ||X^T X||_F computed once, so the cost is one (q, p) product
    per pair.

    Args:
        feats_a: Features (n, p_i) per block of model A (e.g. the student), same n rows.
        feats_b: Features (n, q_j) per block of model B (e.g. the teacher), same n rows.

    Returns:
        Float64 matrix (len(feats_a), len(feats_b)) with entry [i, j] = CKA(a_i, b_j).

    Raises:
        ValueError: A list is empty, or a tensor fails :func:`linear_cka`'s checks.
        TypeError: An entry is not a real torch tensor.
    """
    for name, feats in (('feats_a', feats_a), ('feats_b', feats_b)):
        if isinstance(feats, torch.Tensor) or not isinstance(feats, Sequence):
            raise TypeError(f'{name} must be a list of (n, C) tensors, got {type(feats).__name__}')
        if len(feats) == 0:
            raise ValueError(f'{name} is empty; need at least one (n, C) tensor')
        for i, f in enumerate(feats):
            _check_features(f, f'{name}[{i}]')
    n = feats_a[0].shape[0]
    for name, feats in (('feats_a', feats_a), ('feats_b', feats_b)):
        for i, f in enumerate(feats):
            if f.shape[0] != n:
                raise ValueError(
                    f'{name}[{i}] has {f.shape[0]} rows, feats_a[0] has {n}: every tensor '
                    'must hold the same examples'
                )
    device = feats_a[0].device
    a = [_centre(f.to(device)) for f in feats_a]
    b = [_centre(f.to(device)) for f in feats_b]
    norm_a = [_self_norm(f, f'feats_a[{i}]') for i, f in enumerate(a)]
    norm_b = [_self_norm(f, f'feats_b[{j}]') for j, f in enumerate(b)]
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i, (xa, na) in enumerate(zip(a, norm_a)):
        for j, (yb, nb) in enumerate(zip(b, norm_b)):
            out[i, j] = (torch.linalg.matrix_norm(yb.T @ xa) ** 2 / (na * nb)).cpu()
    return out


@torch.no_grad()
def block_features(
    model: nn.Module,
    images: torch.Tensor,
    batch: int = 256,
    tokens: Literal['mean', 'all'] = 'mean',
) -> list[torch.Tensor]:
    """Patch-token features of every block of the one ViT, as CKA inputs.

    Runs ``model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True)`` (block
    outputs before the final norm, prefix tokens such as the class token left out) in eval
    mode, in batches on the model's device.

    Args:
        model: A :class:`g2sd.models.VisionTransformer` (anything with timm's
            ``forward_intermediates`` contract).
        images: Images (B, C_in, H, W), normalised as the model expects.
        batch: Images per forward pass.
        tokens: ``'mean'``: one row per image, the mean over its N patch tokens, (B, C);
            ``'all'``: every patch token of every image as a row, (B * N, C), image-major.

    Returns:
        One float32 CPU tensor per block, (B, C) or (B * N, C).

    Raises:
        ValueError: ``tokens`` or ``batch`` is invalid, or ``images`` is not (B, C, H, W)
            with B >= 2.
        TypeError: ``model`` has no ``forward_intermediates``.
    """
    if tokens not in TOKENS:
        raise ValueError(f'tokens must be one of {TOKENS}, got {tokens!r}')
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f'batch must be a positive int, got {batch!r}')
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f'images must be a (B, C, H, W) tensor, got {shape}')
    if images.shape[0] < 2:
        raise ValueError(f'CKA needs at least 2 images, got {images.shape[0]}')
    if not callable(getattr(model, 'forward_intermediates', None)):
        raise TypeError(f'{type(model).__name__} has no forward_intermediates (not a ViT)')
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    per_block: list[list[torch.Tensor]] = []
    try:
        for start in range(0, images.shape[0], batch):
            x = images[start : start + batch].to(device)
            outs = model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True)
            if not per_block:
                per_block = [[] for _ in outs]
            for acc, t in zip(per_block, outs):  # t: (b, N, C) patch tokens
                t = t.mean(dim=1) if tokens == 'mean' else t.reshape(-1, t.shape[-1])
                acc.append(t.float().cpu())
    finally:
        model.train(was_training)
    feats = [torch.cat(acc) for acc in per_block]
    logger.debug(
        'block features: %d blocks, shapes %s', len(feats), [tuple(f.shape) for f in feats]
    )
    return feats
