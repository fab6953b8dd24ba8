"""Position embeddings: MAE's fixed 2-D sin-cos table, grid and rel-pos resampling.

A low layer (torch only) that the models (:mod:`g2sd.models.vit`) and the checkpoint
loader (:mod:`g2sd.checkpoint`) both import, so loading never reaches up into a model file.
The sin-cos table follows MAE (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022), as used by G2SD (Huang et al., CVPR 2023, arXiv 2302.14771).
Relative-position tables are resampled as detectron2's ViTDet ``get_rel_pos`` does
(Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ['get_2d_sincos_pos_embed', 'resample_pos_embed', 'resample_rel_pos', 'to_2tuple']


def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    """An int ``n`` as ``(n, n)``; a pair as a tuple of two ints."""
    if isinstance(x, int):
        return (x, x)
    if len(x) != 2:
        raise ValueError(f'expected an int or a pair of ints, got {x!r}')
    return (int(x[0]), int(x[1]))


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | Sequence[int], cls_token: bool = False
) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding, identical to MAE's ``get_2d_sincos_pos_embed``.

    Half of the channels encode the column (w) coordinate, half the row (h), each as
    ``[sin(pos * omega), cos(pos * omega)]`` with ``omega = 1 / 10000^(2i / (D/2))``.

    Args:
        embed_dim: Channels D; must be divisible by 4.
        grid_size: Patch grid (H, W) or a single int for a square grid.
        cls_token: Prepend an all-zero row for the class token.

    Returns:
        Tensor of shape (H*W [+1], D), float32.
    """
    if embed_dim % 4 != 0:
        raise ValueError(
            f'sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}'
        )
    gh, gw = to_2tuple(grid_size)
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000**omega  # (D/4,)
    ys, xs = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing='ij'
    )
    # MAE: grid = meshgrid(grid_w, grid_h) -> first half encodes w, second half h.
    out_w = xs.reshape(-1, 1) * omega[None]
    out_h = ys.reshape(-1, 1) * omega[None]
    emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    num_prefix_tokens: int = 1,
    old_grid: Sequence[int] | None = None,
    interpolation: str = 'bicubic',
) -> torch.Tensor:
    """Resample an absolute position embedding to another patch grid.

    Args:
        pos_embed: (1, P + H*W, C) with P prefix (class) tokens.
        new_grid: Target grid (H', W').
        num_prefix_tokens: Number of leading tokens that are not resampled.
        old_grid: Source grid; inferred as square when None.
        interpolation: Mode for ``F.interpolate``.

    Returns:
        (1, P + H'*W', C) in the input's dtype.
    """
    if pos_embed.ndim != 3:
        raise ValueError(f'pos_embed must be (1, N, C), got shape {tuple(pos_embed.shape)}')
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f'cannot infer a square grid from {n} position tokens; give old_grid')
        old_grid = (side, side)
    oh, ow = to_2tuple(old_grid)
    nh, nw = to_2tuple(new_grid)
    if (oh, ow) == (nh, nw):
        return pos_embed
    dtype = pos_embed.dtype
    grid = grid.reshape(1, oh, ow, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(nh, nw), mode=interpolation, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, -1).to(dtype)
    return torch.cat([prefix, grid], dim=1)


def resample_rel_pos(rel_pos: torch.Tensor, new_len: int) -> torch.Tensor:
    """Resample a 1-D relative-position table by linear interpolation.

    Identical to the interpolation in detectron2's ViTDet ``get_rel_pos``
    (``F.interpolate(mode='linear')``, ``align_corners=False``), used when a table made
    for one window / input size (``L = 2 * size - 1`` rows) serves another.

    Args:
        rel_pos: Table (L, C).
        new_len: Rows of the result, L'.

    Returns:
        (L', C) in the input's dtype; the input itself when ``L' == L``.
    """
    if rel_pos.ndim != 2:
        raise ValueError(f'rel_pos must be (L, C), got shape {tuple(rel_pos.shape)}')
    if isinstance(new_len, bool) or not isinstance(new_len, int) or new_len < 1:
        raise ValueError(f'new_len must be a positive int, got {new_len!r}')
    if rel_pos.shape[0] == new_len:
        return rel_pos
    dtype = rel_pos.dtype
    table = rel_pos.float().reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)  # (1, C, L)
    table = F.interpolate(table, size=new_len, mode='linear')
    return table.reshape(-1, new_len).permute(1, 0).to(dtype)
