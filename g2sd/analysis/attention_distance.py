"""Mean attention distance per head and layer of a ViT.

The analysis of D-MAE (Wang et al., "A Closer Look at Self-Supervised Lightweight Vision
Transformers", ICML 2023, Fig. 3), introduced by ViT (Dosovitskiy et al., "An Image is Worth
16x16 Words", ICLR 2021, Fig. 7) and used by Raghu et al. (NeurIPS 2021): how far, in pixels,
a head looks. For a query patch i and a key patch j whose centres are ``G_ij`` pixels apart
(Euclidean distance; patch (r, c) of a grid of ``p_h x p_w`` patches has its centre at
``((r + 1/2) p_h, (c + 1/2) p_w)``, so ``G_ij = p * grid distance`` for square patches)::

    D_i = sum_j a_ij G_ij          (j over the patch keys)
    D   = mean over images and patch queries i of D_i

per head, where ``a`` is the head's attention.

Definition used here (exactly):

* attention ``softmax(q k^T * head_dim^-0.5 + bias)`` over **all** the tokens of the block
  (class token and any other extra token included as keys, ``bias`` = the block's relative
  position bias when it has one), as the model computes it;
* restricted to the patch-to-patch part: the extra tokens are neither queries nor keys;
* ``renormalize=True`` (default): every query's row of that part is divided by its sum, so
  ``D_i`` is the attention-weighted mean distance over the patches it attends to and does not
  shrink when a head puts mass on the class token; ``renormalize=False``: the weights are
  used as they are (rows sum to < 1, the mass on the class token counts as distance 0), the
  choice of the usual implementations of this plot (e.g. the "probing ViTs" notebooks).

With uniform attention over the patches, ``D`` is the mean of ``G`` over all (i, j) pairs
(:func:`uniform_attention_distance`), the ceiling a "global" head approaches; one-hot attention
to the query itself gives 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = [
    'distance_matrix',
    'mean_attention_distance',
    'model_attention_distance',
    'patch_attention',
    'uniform_attention_distance',
]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """A positive int or a pair of positive ints as ``(h, w)``; ValueError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2:
        pair = tuple(value)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    else:
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    if min(pair) < 1:
        raise ValueError(f'{name} must be positive, got {value!r}')
    return pair


def distance_matrix(grid: tuple[int, int], patch_size: int | Sequence[int]) -> torch.Tensor:
    """Pixel distances between the centres of the patches of a grid.

    Args:
        grid: Patch grid (H, W); patches are numbered row-major (index ``r * W + c``), the
            order of the ViT's patch tokens.
        patch_size: Patch side ``p`` or ``(p_h, p_w)`` in pixels.

    Returns:
        (N, N) float64 tensor, N = H * W: ``G[i, j] = sqrt((dr p_h)^2 + (dc p_w)^2)``.
    """
    h, w = _pair(grid, 'grid')
    ph, pw = _pair(patch_size, 'patch_size')
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing='ij'
    )
    centres = torch.stack([rows.reshape(-1) * ph, cols.reshape(-1) * pw], dim=1)  # (N, 2)
    return torch.cdist(centres, centres)


def uniform_attention_distance(grid: tuple[int, int], patch_size: int | Sequence[int]) -> float:
    """Mean attention distance of uniform attention over the patches: the mean of ``G``."""
    return distance_matrix(grid, patch_size).mean().item()


def mean_attention_distance(
    attn: torch.Tensor, grid: tuple[int, int], patch_size: int | Sequence[int]
) -> torch.Tensor:
    """Mean attention distance per head of patch-to-patch attention weights.

    Args:
        attn: (B, heads, N, N) attention of patch queries (dim 2) over patch keys (dim 3),
            N = H * W patches in row-major order; non-negative rows summing to <= 1 (1 for
            renormalised weights, see :func:`patch_attention`).
        grid: Patch grid (H, W).
        patch_size: Patch side or ``(p_h, p_w)`` in pixels.

    Returns:
        (heads,) float64: ``mean_{b, i} sum_j attn[b, h, i, j] G[i, j]``.
    """
    if not isinstance(attn, torch.Tensor) or attn.ndim != 4:
        raise ValueError(
            'attn must be a (B, heads, N, N) tensor, got '
            f'{tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__}'
        )
    dist = distance_matrix(grid, patch_size)
    n = dist.shape[0]
    if attn.shape[-2:] != (n, n) or attn.shape[0] < 1:
        raise ValueError(
            f'attn of shape {tuple(attn.shape)} does not match the {n} patches of grid {grid} '
            '(expected (B >= 1, heads, N, N))'
        )
    a = attn.detach().to(torch.float64)
    if not torch.isfinite(a).all() or a.min() < -1e-6 or a.sum(-1).max() > 1 + 1e-4:
        raise ValueError(
            'attn must hold attention probabilities (finite, >= 0, rows summing to <= 1); got '
            f'min {a.min().item():.4g}, max row sum {a.sum(-1).max().item():.4g} '
            '(logits? apply the softmax first, see patch_attention)'
        )
    return (a * dist.to(a.device)).sum(-1).mean(dim=(0, 2)).cpu()


def patch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    num_patches: int,
    num_lead_tokens: int = 0,
    bias: torch.Tensor | None = None,
    renormalize: bool = True,
) -> torch.Tensor:
    """Patch-to-patch attention weights of one block from its queries and keys.

    Args:
        q: Queries (B, heads, T, head_dim), T = lead tokens + N patches + trail tokens.
        k: Keys (B, heads, T, head_dim).
        num_patches: N, the patch tokens, which follow the ``num_lead_tokens`` first tokens.
        num_lead_tokens: Tokens before the patches (1 for a class token).
        bias: Additive attention bias broadcastable to (B, heads, T, T), or None.
        renormalize: Divide each query's patch row by its sum (see the module docstring).

    Returns:
        (B, heads, N, N) float32: ``softmax(q k^T / sqrt(head_dim) + bias)`` over all T keys,
        restricted to patch queries and patch keys [and renormalised].
    """
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(
            f'q and k must both be (B, heads, T, head_dim), got {tuple(q.shape)} / {tuple(k.shape)}'
        )
    t = q.shape[2]
    if num_lead_tokens < 0 or num_patches < 1 or num_lead_tokens + num_patches > t:
        raise ValueError(
            f'num_lead_tokens={num_lead_tokens} + num_patches={num_patches} do not fit in '
            f'the {t} tokens of q'
        )
    q, k = q.float(), k.float()
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, T, T)
    if bias is not None:
        logits = logits + bias.float()
    attn = logits.softmax(dim=-1)
    s = slice(num_lead_tokens, num_lead_tokens + num_patches)
    attn = attn[:, :, s, s]
    if renormalize:
        attn = attn / attn.sum(-1, keepdim=True)
    return attn


@torch.no_grad()
def model_attention_distance(
    model: torch.nn.Module,
    images: torch.Tensor,
    renormalize: bool = True,
    batch_size: int = 100,
) -> torch.Tensor:
    """Mean attention distance of every head of every block of the one ViT.

    Each block's q, k come from ``model.forward_block_qkv`` on the full (unmasked) images, in
    eval mode; the attention is :func:`patch_attention` (with the block's relative position
    bias when it has one), the distance :func:`mean_attention_distance` with the model's
    patch size, averaged over all the images.

    Args:
        model: A :class:`g2sd.models.VisionTransformer` without window attention.
        images: (B, C_in, H, W) input images, normalised as the model was trained.
        renormalize: See :func:`patch_attention`.
        batch_size: Images per forward pass.

    Returns:
        (depth, heads) float64 tensor, in pixels; with TinyMIM's ``last_block_heads`` a block
        with fewer heads than the widest has NaN in its missing columns.
    """
    from g2sd.models import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f'model must be a g2sd.models.VisionTransformer, got {type(model).__name__}'
        )
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) < 1:
        raise ValueError(
            'images must be a non-empty (B, C, H, W) tensor, got '
            f'{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)}'
        )
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    windowed = [i for i, blk in enumerate(model.blocks) if getattr(blk, 'window_size', 0) > 0]
    if windowed:
        raise ValueError(
            f'blocks {windowed} use window attention: their attention is per window, not over '
            'the whole grid; mean attention distance is defined here for global attention only'
        )
    grid = model.grid_of(images)
    n = grid[0] * grid[1]
    patch_size = tuple(model.patch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        heads = [blk.attn.num_heads for blk in model.blocks]
        total = torch.zeros(len(heads), max(heads), dtype=torch.float64)
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            for index, blk in enumerate(model.blocks):
                q, k, _ = model.forward_block_qkv(x, index)
                bias = blk.attn.attn_bias(q, grid)
                attn = patch_attention(
                    q, k, n, model.num_lead_tokens, bias=bias, renormalize=renormalize
                )
                total[index, : heads[index]] += mean_attention_distance(
                    attn, grid, patch_size
                ) * len(x)
    finally:
        model.train(was_training)
    result = total / len(images)
    for index, h in enumerate(heads):
        result[index, h:] = float('nan')
    logger.info(
        'mean attention distance of %d images (grid %s, patch %s): per layer %s',
        len(images),
        grid,
        patch_size,
        [round(v, 2) for v in result.nanmean(1).tolist()],
    )
    return result
