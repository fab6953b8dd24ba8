"""Position embeddings: MAE's fixed 2-D sin-cos table, grid and rel-pos resampling.

A low layer (torch only) that the models (:mod:`g2sd.models.vit`) and the checkpoint
loader (:mod:`g2sd.checkpoint`) both import, so loading never reaches up into a model file.
The sin-cos table follows MAE (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022), as used by G2SD (Huang et al., CVPR 2023, arXiv 2302.14771).
Relative-position tables are resampled as detectron2's ViTDet ``get_rel_pos`` does
(Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022),
BEiT relative position bias tables with BEiT's geometric-sequence interpolation (Bao et al.,
"BEiT: BERT Pre-Training of Image Transformers", ICLR 2022; scipy, imported when used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    'get_2d_sincos_pos_embed',
    'resample_pos_embed',
    'resample_rel_pos',
    'resample_rel_pos_bias_table',
    'to_2tuple',
]


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


def _geometric_offsets(src_side: int, dst_side: int) -> list[float]:
    """Source offsets of BEiT's geometric-sequence interpolation along one axis.

    The ``src_side`` (odd) offsets of the source table are placed at
    ``0, +-1, +-(1 + q), +-(1 + q + q^2), ...`` where the ratio ``q`` in [1.01, 1.5] is found
    by bisection so that the outermost one is about ``dst_side // 2``: near the centre the
    spacing stays 1 (short offsets keep their values), at the border it grows. Exactly the
    loop of BEiT's ``mmcv_custom/checkpoint.py`` / mmseg's ``_geometric_sequence_interpolation``
    (including the last bisection midpoint as ``q``).
    """

    def geometric_progression(a: float, r: float, n: int) -> float:
        return a * (1.0 - r**n) / (1.0 - r)

    left, right = 1.01, 1.5
    q = (left + right) / 2.0
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = geometric_progression(1, q, src_side // 2)
        if gp > dst_side // 2:
            right = q
        else:
            left = q
    dis: list[float] = []
    cur = 1.0
    for i in range(src_side // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0.0] + dis


def resample_rel_pos_bias_table(
    table: torch.Tensor, dst_grid: int | Sequence[int], num_extra: int = 3
) -> torch.Tensor:
    """Resample a BEiT relative position bias table to another token grid.

    BEiT's geometric-sequence interpolation, as in BEiT's
    ``semantic_segmentation/mmcv_custom/checkpoint.py`` (used by the official G2SD seg code)
    and mmseg's ``BEiT.resize_rel_pos_embed`` / ``_geometric_sequence_interpolation``: the
    (2W - 1) x (2W - 1) offset part of each head's column (rows ``dh``, columns ``dw``, the
    layout of :func:`g2sd.layers.relative_position_index`) is placed on the geometric offsets
    of :func:`_geometric_offsets`, fitted with an interpolating bicubic spline and read at the
    integer offsets ``-(W' - 1) .. W' - 1`` of the new grid; the ``num_extra`` last rows
    (class-to-token, token-to-class, class-to-class) are kept unchanged.

    Equivalence and differences: the official code fits ``scipy.interpolate.interp2d(x, y, z,
    kind='cubic')``, removed in SciPy 1.14. On a regular grid ``interp2d`` calls FITPACK's
    ``regrid_smth`` on ``(x, y, z.T)`` with ``kx = ky = 3, s = 0`` and evaluates with
    ``bispev`` (transposing back), which is exactly
    ``RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)(dx, dy).T`` used here; both clamp the
    read points outside the fitted range to its border (FITPACK's ``fpbisp``), which happens
    when the new grid is more than about 1.5^(W/2) times larger. Like the official code the
    spline is fitted in float64 from the float32 table and the result is returned in the
    input's dtype and device. Our extension: a non-square ``dst_grid`` (Wh', Ww') uses the
    geometric offsets of ``2Wh' - 1`` along the rows and of ``2Ww' - 1`` along the columns
    (an axis whose size does not change keeps its integer offsets, so it is not resampled);
    the official code only serves square grids and raises ``NotImplementedError``; for a
    square grid this is the official computation. The source grid is inferred from the row
    count and must be square.

    Args:
        table: (L, heads) with ``L = (2W - 1)^2 + num_extra``.
        dst_grid: New token grid (Wh', Ww') or an int for a square grid.
        num_extra: Trailing rows that are not offsets (3 with BEiT's class-token rows).

    Returns:
        ((2Wh' - 1) * (2Ww' - 1) + num_extra, heads); the input itself when the grid is the
        same.

    Raises:
        ValueError: ``table`` is not 2-D, its offset rows are not a square (2W - 1)^2 with
            W >= 3 (a bicubic fit needs at least 4 offsets per axis), or ``dst_grid`` /
            ``num_extra`` are not positive / non-negative ints.
    """
    if table.ndim != 2:
        raise ValueError(
            f'relative position bias table must be (L, heads), got shape {tuple(table.shape)}'
        )
    if isinstance(num_extra, bool) or not isinstance(num_extra, int) or num_extra < 0:
        raise ValueError(f'num_extra must be an int >= 0, got {num_extra!r}')
    dst_h, dst_w = to_2tuple(dst_grid)
    if min(dst_h, dst_w) < 1:
        raise ValueError(f'dst_grid must be positive, got {dst_grid!r}')
    rows, heads = table.shape
    n = rows - num_extra
    src_side = math.isqrt(max(n, 0))
    if n <= 0 or src_side * src_side != n or src_side % 2 == 0:
        raise ValueError(
            f'cannot infer a square grid from a relative position bias table of shape '
            f'{tuple(table.shape)} with {num_extra} extra rows: {n} offset rows are not '
            '(2W - 1)^2'
        )
    side_h, side_w = 2 * dst_h - 1, 2 * dst_w - 1
    if (side_h, side_w) == (src_side, src_side):
        return table
    if src_side < 4:
        raise ValueError(
            f'a relative position bias table of shape {tuple(table.shape)} (grid '
            f'{(src_side + 1) // 2}x{(src_side + 1) // 2}) is too small for the bicubic '
            'interpolation (needs a grid of at least 3x3)'
        )
    try:
        from scipy.interpolate import RectBivariateSpline
    except ImportError as e:  # pragma: no cover - scipy comes with mmseg
        raise ImportError(
            'resampling a relative position bias table needs scipy (pip install scipy)'
        ) from e
    import numpy as np

    # An axis that keeps its size (only with a non-square dst_grid) keeps its offsets.
    same = [float(k) for k in range(-(src_side // 2), src_side // 2 + 1)]
    x = same if side_w == src_side else _geometric_offsets(src_side, side_w)  # columns: dw
    y = same if side_h == src_side else _geometric_offsets(src_side, side_h)  # rows: dh
    t = side_w // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    t = side_h // 2.0
    dy = np.arange(-t, t + 0.1, 1.0)
    offsets = table[:n].detach().cpu().float()
    out = []
    for i in range(heads):
        z = offsets[:, i].view(src_side, src_side).numpy()  # (rows dh, columns dw)
        # interp2d(x, y, z, kind='cubic')(dx, dy) on a regular grid:
        spline = RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)
        out.append(torch.from_numpy(np.ascontiguousarray(spline(dx, dy).T)).float().reshape(-1))
    new = torch.stack(out, dim=1).to(device=table.device, dtype=table.dtype)
    return torch.cat([new, table[n:].detach()], dim=0)
