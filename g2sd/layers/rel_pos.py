"""Window attention and relative positions for the one ViT (torch only).

Two families of relative position that the detection and segmentation backbones of G2SD
(Huang et al., CVPR 2023, arXiv 2302.14771) inherit from their teachers:

* ViTDet (Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection",
  ECCV 2022): non-overlapping window attention with zero padding to a multiple of the
  window, and *decomposed* relative position (MViTv2, Li et al., CVPR 2022): per-axis
  tables ``rel_pos_h`` / ``rel_pos_w`` of shape (2 * size - 1, head_dim) read through the
  queries. The functions follow detectron2's ``modeling/backbone/utils.py``
  (``window_partition``, ``window_unpartition``, ``get_rel_pos``,
  ``add_decomposed_rel_pos``), except that the decomposed term is returned as an additive
  attention bias instead of being added to an explicit attention matrix.
* BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022): one
  learned bias per head and relative offset, ``relative_position_bias_table`` of shape
  ((2 * Wh - 1) * (2 * Ww - 1) + 3, heads), indexed by ``relative_position_index``; the three
  extra rows are class-to-token, token-to-class and class-to-class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from g2sd.layers.pos_embed import resample_rel_pos

__all__ = [
    'decomposed_rel_pos_bias',
    'get_rel_pos',
    'relative_position_index',
    'window_partition',
    'window_unpartition',
]


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping windows, zero-padding to a multiple first.

    Args:
        x: Tokens (B, H, W, C).
        window_size: Window side S.

    Returns:
        (windows (B * nW, S, S, C), padded grid (Hp, Wp)).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows back to the grid, padding removed.

    Args:
        windows: (B * nW, S, S, C).
        window_size: Window side S.
        pad_hw: Padded grid (Hp, Wp) returned by :func:`window_partition`.
        hw: Grid (H, W) before padding.

    Returns:
        Tokens (B, H, W, C).
    """
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    The table is first resampled (:func:`g2sd.layers.resample_rel_pos`) to
    ``2 * max(q_size, k_size) - 1`` rows, as in detectron2.

    Args:
        q_size: Query positions along the axis.
        k_size: Key positions along the axis.
        rel_pos: Table (L, C).

    Returns:
        (q_size, k_size, C).
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    table = resample_rel_pos(rel_pos, max_rel_dist)
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[relative_coords.long().to(table.device)]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Decomposed relative position (MViTv2 / ViTDet) as an additive attention bias.

    ``bias[b, i, j] = <q_i, Rh[h(i), h(j)]> + <q_i, Rw[w(i), w(j)]>`` with the *unscaled*
    queries, which is what detectron2's ``add_decomposed_rel_pos`` adds to
    ``(q * scale) @ k^T``.

    Args:
        q: Queries (B, q_h * q_w, C) (B may include the heads).
        rel_pos_h: Height table (Lh, C).
        rel_pos_w: Width table (Lw, C).
        q_size: Query grid (q_h, q_w).
        k_size: Key grid (k_h, k_w).

    Returns:
        Bias (B, q_h * q_w, k_h * k_w).
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum('bhwc,hkc->bhwk', r_q, rh)
    rel_w = torch.einsum('bhwc,wkc->bhwk', r_q, rw)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(b, q_h * q_w, k_h * k_w)


def relative_position_index(grid: tuple[int, int], class_token: bool = True) -> torch.Tensor:
    """BEiT's index into ``relative_position_bias_table`` for every (query, key) pair.

    Offsets ``(dh, dw)`` map to ``(dh + Wh - 1) * (2 * Ww - 1) + (dw + Ww - 1)``; with a
    class token, row 0 / column 0 use the three extra entries after the
    ``(2 * Wh - 1) * (2 * Ww - 1)`` offsets (class-to-token, token-to-class, class-to-class).

    Args:
        grid: Token grid (Wh, Ww).
        class_token: Tokens include a leading class token.

    Returns:
        Long tensor (T, T), T = Wh * Ww (+ 1 with the class token).
    """
    wh, ww = grid
    num_relative_distance = (2 * wh - 1) * (2 * ww - 1) + 3
    coords = torch.stack(
        torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')
    )  # (2, Wh, Ww)
    flat = coords.flatten(1)  # (2, Wh * Ww)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    grid_index = rel.sum(-1)
    if not class_token:
        return grid_index
    n = wh * ww + 1
    index = torch.zeros((n, n), dtype=grid_index.dtype)
    index[1:, 1:] = grid_index
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index
