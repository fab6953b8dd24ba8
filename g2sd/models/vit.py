"""The one Vision Transformer of g2sd (timm / MAE state-dict key layout).

Every stage of Generic-to-Specific Distillation (G2SD, Huang et al., CVPR 2023,
arXiv 2302.14771) uses this class: the MAE encoder (teacher and student), the
classification backbone, and the base of the detection / segmentation adapters.
Keys are exactly those of timm's ``VisionTransformer`` and of the MAE release
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm`` / ``fc_norm``, ``head``), so one
checkpoint feeds every task without conversion.

Detection / segmentation options are options of this one class, with the key names of
the checkpoints they come from: ViTDet window attention and decomposed relative position
(Li et al., ECCV 2022; ``blocks.{i}.attn.rel_pos_h`` / ``rel_pos_w`` as detectron2 and
mmdet's ViTDet), BEiT relative position bias and layer scale (Bao et al., ICLR 2022;
``blocks.{i}.attn.relative_position_bias_table``, ``blocks.{i}.gamma_1`` / ``gamma_2`` as
BEiT and mmseg), and no final norm. Defaults build exactly the plain ViT above.

Design follows timm's ``vision_transformer.py`` (Apache-2.0) and MAE's
``models_vit.py`` (CC-BY-NC 4.0); the code here is our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from g2sd.layers.pos_embed import get_2d_sincos_pos_embed, resample_pos_embed, to_2tuple
from g2sd.layers.rel_pos import (
    decomposed_rel_pos_bias,
    relative_position_index,
    window_partition,
    window_unpartition,
)

__all__ = [
    'Attention',
    'Block',
    'MAEEncoderOutput',
    'Mlp',
    'PatchEmbed',
    'QKV',
    'VisionTransformer',
    'get_2d_sincos_pos_embed',
    'random_masking',
    'resample_pos_embed',
]


class QKV(NamedTuple):
    """Query / key / value of one attention layer, each (B, heads, N, head_dim)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


@dataclass
class MAEEncoderOutput:
    """What the masked encoder returns.

    Attributes:
        latent: Normed tokens for the decoder, (B, 1 + V, C) (cls first, V visible).
        prenorm: Tokens of the last block before the final norm, (B, 1 + V, C).
        mask: (B, N) with 1 for masked, 0 for visible patches (original order).
        ids_restore: (B, N) permutation that undoes the shuffle.
        ids_keep: (B, V) indices of the visible patches.
        qkv: q/k/v of the blocks requested by ``qkv_blocks`` (block index -> QKV).
    """

    latent: torch.Tensor
    prenorm: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    ids_keep: torch.Tensor
    qkv: dict[int, QKV] = field(default_factory=dict)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample random masking by argsort of uniform noise.

    Args:
        x: Patch tokens (B, N, C).
        mask_ratio: Fraction of patches removed, in [0, 1).
        noise: Optional (B, N) noise; the same noise gives the same mask.

    Returns:
        (x_visible (B, V, C), mask (B, N), ids_restore (B, N), ids_keep (B, V)).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
    b, n, c = x.shape
    keep = int(n * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(b, n, device=x.device)
    elif noise.shape != (b, n):
        raise ValueError(f'noise must have shape {(b, n)}, got {tuple(noise.shape)}')
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))
    mask = torch.ones(b, n, device=x.device, dtype=x.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore, ids_keep


class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided convolution (key ``patch_embed.proj``).

    Args:
        img_size: Nominal input size; fixes the stored grid.
        patch_size: Patch side.
        in_chans: Input channels.
        embed_dim: Output channels.
        strict_img_size: Refuse inputs whose size differs from ``img_size``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        strict_img_size: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(
                f'img_size {self.img_size} must be divisible by patch_size {self.patch_size}'
            )
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H/p, W/p)."""
        if x.ndim != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f'expected images (B, {self.proj.in_channels}, H, W), got {tuple(x.shape)}'
            )
        h, w = x.shape[-2:]
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f'input size {(h, w)} is not divisible by patch {self.patch_size}')
        if self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(f'input size {(h, w)} differs from img_size {self.img_size}')
        return self.proj(x)


class Mlp(nn.Module):
    """Two-layer MLP with GELU (keys ``fc1``, ``fc2``)."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int | None = None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``p == 0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f'drop path probability must be in [0, 1), got {p}')
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'p={self.p}'


#: Train with explicit ``softmax(q k^T / sqrt(d)) v`` under CPU autocast (see
#: :func:`_explicit_attention`); False always uses ``scaled_dot_product_attention``.
CPU_AMP_EXPLICIT_ATTENTION = True


def _explicit_attention(q: torch.Tensor) -> bool:
    """Use explicit attention for ``q``: CPU, autocast on, gradients wanted.

    PyTorch's CPU flash-attention backward in bf16 is several times slower than two bf16
    matmuls and a softmax at ViT token counts (measured: 50 vs 24 ms for (8, 8, 197, 32)),
    so a CPU mixed-precision training step attends explicitly. fp32, CUDA and inference
    (teacher, no grad) keep ``scaled_dot_product_attention``.
    """
    return (
        CPU_AMP_EXPLICIT_ATTENTION
        and q.device.type == 'cpu'
        and q.requires_grad
        and torch.is_autocast_enabled('cpu')
    )


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (keys ``qkv``, ``proj``).

    The forward pass uses PyTorch's fused ``scaled_dot_product_attention`` (explicit
    attention when training under CPU autocast, see :func:`_explicit_attention`); a relative
    position term, when built, enters it as an additive attention bias. With
    ``return_qkv=True`` it also returns q, k and v (each (B, heads, N, head_dim)) so a
    distiller can form attention logits or relations for the one block it needs.

    Args:
        dim: Channels C.
        num_heads: Heads; ``dim`` must be divisible by it.
        qkv_bias: Bias on the qkv projection.
        rel_pos_size: Build ViTDet's decomposed relative position for this token grid
            (H, W): parameters ``rel_pos_h`` (2H - 1, head_dim) and ``rel_pos_w``
            (2W - 1, head_dim), zero-initialised (detectron2 ``rel_pos_zero_init=True``);
            other grids are served by linear resampling of the tables. None: not built.
        rel_pos_bias_grid: Build BEiT's relative position bias for this token grid
            (Wh, Ww): parameter ``relative_position_bias_table``
            ((2Wh - 1)(2Ww - 1) + 3, heads), zero-initialised, and the non-persistent
            buffer ``relative_position_index``. None: not built.
        rel_pos_bias_class_token: The tokens of a BEiT-bias attention start with a class
            token (uses the table's three extra rows).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        rel_pos_size: Sequence[int] | None = None,
        rel_pos_bias_grid: Sequence[int] | None = None,
        rel_pos_bias_class_token: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        if rel_pos_size is not None and rel_pos_bias_grid is not None:
            raise ValueError(
                'decomposed relative position (rel_pos_size) and BEiT relative position '
                'bias (rel_pos_bias_grid) are alternatives; got both'
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h: nn.Parameter | None = None
        self.rel_pos_w: nn.Parameter | None = None
        self.relative_position_bias_table: nn.Parameter | None = None
        self.relative_position_index: torch.Tensor | None
        if rel_pos_size is not None:
            h, w = to_2tuple(rel_pos_size)
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * h - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * w - 1, self.head_dim))
        if rel_pos_bias_grid is not None:
            wh, ww = to_2tuple(rel_pos_bias_grid)
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * wh - 1) * (2 * ww - 1) + 3, num_heads)
            )
            index = relative_position_index((wh, ww), class_token=rel_pos_bias_class_token)
            self.register_buffer('relative_position_index', index, persistent=False)
        else:
            self.relative_position_index = None

    def get_qkv(self, x: torch.Tensor) -> QKV:
        """(B, N, C) -> q, k, v each (B, heads, N, head_dim), without attending."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return QKV(*qkv.unbind(0))

    def attn_bias(self, q: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The additive attention bias of the built relative position, or None.

        Args:
            q: Queries (B, heads, N, head_dim).
            hw: Token grid (H, W) of the N tokens (needed for decomposed rel-pos).

        Returns:
            (B, heads, N, N) (decomposed rel-pos), (1, heads, T, T) (BEiT bias) or None.
        """
        b, heads, n, d = q.shape
        if self.rel_pos_h is not None:
            if hw is None or hw[0] * hw[1] != n:
                raise ValueError(
                    f'decomposed relative position needs the token grid of its {n} tokens, '
                    f'got hw={hw}'
                )
            bias = decomposed_rel_pos_bias(
                q.reshape(b * heads, n, d), self.rel_pos_h, self.rel_pos_w, hw, hw
            )
            return bias.view(b, heads, n, n).to(q.dtype)
        if self.relative_position_bias_table is not None:
            index = self.relative_position_index
            t = index.shape[0]
            if n != t:
                raise ValueError(
                    f'the relative position bias was built for {t} tokens, got {n} (BEiT-style '
                    'bias needs the full, unmasked grid of img_size)'
                )
            bias = self.relative_position_bias_table[index.view(-1)].view(t, t, heads)
            return bias.permute(2, 0, 1).unsqueeze(0).to(q.dtype)
        return None

    def forward(
        self, x: torch.Tensor, return_qkv: bool = False, hw: tuple[int, int] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, QKV]:
        """(B, N, C) -> (B, N, C) [, QKV]; ``hw`` is the (H, W) grid of the N tokens."""
        b, n, c = x.shape
        q, k, v = self.get_qkv(x)
        bias = self.attn_bias(q, hw)
        if bias is None and _explicit_attention(q):
            out = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(-1) @ v
        elif bias is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if return_qkv:
            return out, QKV(q, k, v)
        return out


class Block(nn.Module):
    """Pre-norm transformer block (keys ``norm1``, ``attn``, ``norm2``, ``mlp``).

    Options for the detection / segmentation backbones (defaults: a plain ViT block):
    ViTDet window attention (the (B, H, W, C) grid is zero-padded to a multiple of the
    window, split into windows, attended per window and stitched back, as in detectron2)
    and decomposed relative position (``attn.rel_pos_h`` / ``attn.rel_pos_w``), BEiT's
    relative position bias (``attn.relative_position_bias_table``) and layer scale
    (``gamma_1`` / ``gamma_2``, BEiT / mmseg names).

    Args:
        dim: Channels C.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        qkv_bias: Bias on the qkv projection.
        drop_path: Stochastic depth probability.
        norm_eps: LayerNorm epsilon.
        window_size: Window side for window attention; 0 attends globally.
        rel_pos_size: Grid of the global attention's decomposed rel-pos tables (windowed
            blocks use ``(window_size, window_size)``); None: no decomposed rel-pos.
        rel_pos_bias_grid: Grid of a BEiT relative position bias; None: none.
        rel_pos_bias_class_token: The BEiT-bias tokens start with a class token.
        init_values: Layer-scale initial value (``gamma_1``, ``gamma_2`` of shape (C,));
            None: no layer scale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        *,
        window_size: int = 0,
        rel_pos_size: Sequence[int] | None = None,
        rel_pos_bias_grid: Sequence[int] | None = None,
        rel_pos_bias_class_token: bool = True,
        init_values: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 0:
            raise ValueError(f'window_size must be an int >= 0, got {window_size!r}')
        self.window_size = window_size
        if window_size > 0 and rel_pos_size is not None:
            rel_pos_size = (window_size, window_size)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            rel_pos_size=rel_pos_size,
            rel_pos_bias_grid=rel_pos_bias_grid,
            rel_pos_bias_class_token=rel_pos_bias_class_token,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.init_values = init_values
        self.gamma_1: nn.Parameter | None = None
        self.gamma_2: nn.Parameter | None = None
        if init_values is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        #: The block reads its tokens as a (B, H, W, C) grid (windows / decomposed rel-pos).
        self.needs_grid = window_size > 0 or rel_pos_size is not None

    def _attn_input(
        self, x: torch.Tensor, grid: tuple[int, int] | None
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int] | None]:
        """``norm1`` and, for a grid block, the (B, H, W, C) view split into windows.

        Returns:
            (attention input (B', n, C), its token grid (h, w), padded grid or None).
        """
        x = self.norm1(x)
        if not self.needs_grid:
            return x, None, None
        b, n, c = x.shape
        if grid is None or grid[0] * grid[1] != n:
            raise ValueError(
                'window attention / decomposed relative position need the full token grid: '
                f'got {n} tokens for grid {grid} (no class token, no masking)'
            )
        x = x.view(b, grid[0], grid[1], c)
        if self.window_size == 0:
            return x.reshape(b, n, c), tuple(grid), None
        windows, pad_hw = window_partition(x, self.window_size)
        ws = self.window_size
        return windows.reshape(windows.shape[0], ws * ws, c), (ws, ws), pad_hw

    def forward(
        self, x: torch.Tensor, return_qkv: bool = False, grid: tuple[int, int] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, QKV]:
        """(B, N, C) -> (B, N, C) [, QKV of this block]; ``grid`` = (H, W) of the N tokens.

        For a windowed block the returned q/k/v are per window, (B * nW, heads, S*S, d).
        """
        if not self.needs_grid:
            if return_qkv:
                a, qkv = self.attn(self.norm1(x), return_qkv=True)
            else:
                a, qkv = self.attn(self.norm1(x)), None
        else:
            y, hw, pad_hw = self._attn_input(x, grid)
            a, qkv = self.attn(y, return_qkv=True, hw=hw)
            if pad_hw is not None:
                ws = self.window_size
                a = window_unpartition(a.view(-1, ws, ws, a.shape[-1]), ws, pad_hw, grid)
            a = a.reshape(x.shape)
        if self.gamma_1 is not None:
            a = self.gamma_1 * a
        x = x + self.drop_path(a)
        m = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            m = self.gamma_2 * m
        x = x + self.drop_path(m)
        return (x, qkv) if return_qkv else x

    def forward_qkv(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> QKV:
        """Only ``norm1`` (+ windows) and the qkv projection of this block: (B, N, C) -> QKV."""
        y, _, _ = self._attn_input(x, grid)
        return self.attn.get_qkv(y)


def _take_indices(num_blocks: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's ``feature_take_indices``: None -> all, int n -> last n, else the given ones.

    Returns the sorted, distinct block indices (negative ones counted from the end).
    """
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_blocks:
            raise ValueError(f'last-n indices {indices} out of range 1..{num_blocks}')
        return list(range(num_blocks - indices, num_blocks))
    out = set()
    for i in indices:
        idx = num_blocks + i if i < 0 else i
        if not 0 <= idx < num_blocks:
            raise ValueError(f'block index {i} out of range for {num_blocks} blocks')
        out.add(int(idx))
    if not out:
        raise ValueError('indices selects no block')
    return sorted(out)


class VisionTransformer(nn.Module):
    """Vision Transformer with the timm / MAE key layout.

    Position embeddings are stored for the grid of ``img_size`` and resampled on the fly
    (cached per grid) for other input sizes, so one checkpoint serves 224 px
    classification, 512 px segmentation and 1024 px detection.

    Every forward path prepares its tokens with :meth:`prepare_tokens` (patch embedding +
    position, optional MAE masking, then :meth:`_cat_extra_tokens`, the one override
    point for extra tokens) and runs the blocks with :meth:`_run_blocks` (the one block
    loop).

    Options for the detection / segmentation backbones (defaults keep the plain ViT and
    its keys): ViTDet window attention (``window_size``, ``global_attn_indexes``) and
    decomposed relative position (``use_rel_pos``: ``blocks.{i}.attn.rel_pos_h`` /
    ``rel_pos_w``, sized for the window in windowed blocks and for the ``img_size`` grid in
    global ones, as in detectron2's ViT), BEiT's relative position bias
    (``use_rel_pos_bias``: ``blocks.{i}.attn.relative_position_bias_table``) and layer
    scale (``init_values``: ``blocks.{i}.gamma_1`` / ``gamma_2``, the names of BEiT and
    mmseg's BEiT/MAE backbones), and no final norm (``final_norm=False``).

    Args:
        img_size: Nominal input size (fixes the stored position grid and the grid of the
            global rel-pos tables / BEiT bias).
        patch_size: Patch side.
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for a backbone without head.
        global_pool: ``'token'`` (class token), ``'avg'`` (mean of patch tokens, MAE
            fine-tuning style, with ``fc_norm``) or ``''`` (no pooling).
        embed_dim: Channels C.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden ratio.
        qkv_bias: Bias on qkv projections.
        drop_path_rate: Stochastic depth rate.
        drop_path_mode: ``'linear'`` (0 -> rate over blocks) or ``'constant'`` (TinyMIM:
            every block but the last gets ``rate``).
        last_block_heads: Head count of the last block when it differs (TinyMIM builds the
            student's last block with the teacher's head count).
        pos_embed: ``'sincos'`` (fixed, MAE pre-training) or ``'learn'`` (trainable,
            initialised to sin-cos as in MAE fine-tuning).
        class_token: Use a class token.
        norm_eps: LayerNorm epsilon.
        fc_norm: Norm after pooling instead of before (defaults to ``global_pool == 'avg'``).
        window_size: ViTDet window attention side (e.g. 14); 0: global attention only.
            Needs ``class_token=False``.
        global_attn_indexes: Blocks that keep global attention when ``window_size > 0``
            (ViTDet-B: ``(2, 5, 8, 11)``).
        use_rel_pos: Decomposed relative position in every block (ViTDet). Needs
            ``class_token=False``.
        use_rel_pos_bias: BEiT relative position bias in every block.
        init_values: Layer-scale initial value (BEiT: 0.1); None: no layer scale.
        final_norm: Build the final ``norm`` (False: ViTDet / BEiT-style backbones, no
            ``norm.*`` keys).
        pretrain_img_size: Image size of the stored absolute position table (detectron2
            ViTDet: 224 for a 1024 px detector); its square grid ``pretrain_img_size / p``
            is resampled to the input grid at every forward (drop the class slot, bicubic,
            ``align_corners=False``: detectron2's ``get_abs_pos``). None: ``img_size``.
        pretrain_use_cls_token: The stored table keeps a leading class slot even without a
            class token (detectron2's layout (1, 1 + H*W, C)); it is never added to a token.
        act_checkpoint: Activation checkpointing per block (``torch.utils.checkpoint``,
            non-reentrant) in training mode with gradients enabled.

    Shapes:
        ``forward_features``: (B, C_in, H, W) -> (B, 1 + N, C) (N = H*W / p^2).
        ``forward``: (B, C_in, H, W) -> (B, num_classes) or pooled (B, C).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: Literal['token', 'avg', ''] = 'token',
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_mode: Literal['linear', 'constant'] = 'linear',
        last_block_heads: int | None = None,
        pos_embed: Literal['sincos', 'learn'] = 'learn',
        class_token: bool = True,
        norm_eps: float = 1e-6,
        fc_norm: bool | None = None,
        window_size: int = 0,
        global_attn_indexes: Sequence[int] = (),
        use_rel_pos: bool = False,
        use_rel_pos_bias: bool = False,
        init_values: float | None = None,
        final_norm: bool = True,
        pretrain_img_size: int | None = None,
        pretrain_use_cls_token: bool = False,
        act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pretrain_img_size is not None and (
            isinstance(pretrain_img_size, bool)
            or not isinstance(pretrain_img_size, int)
            or pretrain_img_size < 1
        ):
            raise ValueError(
                f'pretrain_img_size must be a positive int or None, got {pretrain_img_size!r}'
            )
        if not isinstance(pretrain_use_cls_token, bool):
            raise ValueError(
                f'pretrain_use_cls_token must be a bool, got {pretrain_use_cls_token!r}'
            )
        if not isinstance(act_checkpoint, bool):
            raise ValueError(f'act_checkpoint must be a bool, got {act_checkpoint!r}')
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ('sincos', 'learn'):
            raise ValueError(f"pos_embed must be 'sincos' or 'learn', got {pos_embed!r}")
        if depth < 1:
            raise ValueError(f'depth must be >= 1, got {depth}')
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 0:
            raise ValueError(f'window_size must be an int >= 0, got {window_size!r}')
        global_attn_indexes = tuple(global_attn_indexes)
        if global_attn_indexes and window_size == 0:
            raise ValueError(
                f'global_attn_indexes={global_attn_indexes} needs window_size > 0 '
                '(without windows every block is global)'
            )
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f'global_attn_indexes {bad} out of range for depth {depth}')
        if (window_size > 0 or use_rel_pos) and class_token:
            raise ValueError(
                'window attention / decomposed relative position work on the patch grid: '
                f'set class_token=False (got window_size={window_size}, '
                f'use_rel_pos={use_rel_pos}, class_token=True)'
            )
        if use_rel_pos and use_rel_pos_bias:
            raise ValueError('use_rel_pos (ViTDet) and use_rel_pos_bias (BEiT) are alternatives')
        if use_rel_pos_bias and window_size > 0:
            raise ValueError(
                'the BEiT relative position bias is built for the whole img_size grid; '
                f'it cannot be combined with window_size={window_size}'
            )
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_prefix_tokens = 1 if class_token else 0
        #: Tokens before / after the patch tokens in the block input (subclasses with
        #: extra tokens, e.g. a distillation token, set them).
        self.num_lead_tokens = self.num_prefix_tokens
        self.num_trail_tokens = 0
        self.pos_embed_type = pos_embed
        self.window_size = window_size
        self.global_attn_indexes = global_attn_indexes
        self.use_rel_pos = use_rel_pos
        self.use_rel_pos_bias = use_rel_pos_bias
        self.init_values = init_values

        self.act_checkpoint = act_checkpoint
        self.pretrain_img_size = pretrain_img_size
        self.pretrain_use_cls_token = pretrain_use_cls_token

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.patch_size = self.patch_embed.patch_size
        if pretrain_img_size is None:
            pos_grid = self.patch_embed.grid_size
        else:
            ph, pw = self.patch_size
            if pretrain_img_size % ph or pretrain_img_size % pw:
                raise ValueError(
                    f'pretrain_img_size {pretrain_img_size} must be divisible by patch_size '
                    f'{self.patch_size}'
                )
            pos_grid = (pretrain_img_size // ph, pretrain_img_size // pw)
        #: Grid (H, W) of the stored ``pos_embed`` and its leading (class) slots.
        self.pos_embed_grid: tuple[int, int] = pos_grid
        self.num_pos_prefix_tokens = 1 if class_token or pretrain_use_cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_pos = pos_grid[0] * pos_grid[1] + self.num_pos_prefix_tokens
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_pos, embed_dim), requires_grad=pos_embed == 'learn'
        )
        if drop_path_mode == 'linear':
            dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        elif drop_path_mode == 'constant':
            dpr = [drop_path_rate] * (depth - 1) + [0.0]
        else:
            raise ValueError(
                f"drop_path_mode must be 'linear' or 'constant', got {drop_path_mode!r}"
            )
        heads = [num_heads] * depth
        if last_block_heads is not None:
            heads[-1] = last_block_heads
        grid = self.patch_embed.grid_size
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                heads[i],
                mlp_ratio,
                qkv_bias,
                dpr[i],
                norm_eps,
                window_size=0 if i in global_attn_indexes else window_size,
                rel_pos_size=grid if use_rel_pos else None,
                rel_pos_bias_grid=grid if use_rel_pos_bias else None,
                rel_pos_bias_class_token=class_token,
                init_values=init_values,
            )
            for i in range(depth)
        )
        #: timm feature metadata (``features_only`` / ``forward_intermediates``).
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=self.patch_size[0])
            for i in range(depth)
        ]
        use_fc_norm = global_pool == 'avg' if fc_norm is None else fc_norm
        self.norm = (
            nn.LayerNorm(embed_dim, eps=norm_eps)
            if final_norm and not use_fc_norm
            else nn.Identity()
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """MAE initialisation: sin-cos position table, xavier-uniform linears and patch conv.

        Relative-position tables and biases start at zero, layer scales at ``init_values``.
        """
        pe = get_2d_sincos_pos_embed(
            self.embed_dim, self.pos_embed_grid, cls_token=self.num_pos_prefix_tokens > 0
        )
        with torch.no_grad():
            self.pos_embed.copy_(pe.unsqueeze(0))
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == 'head':
                    nn.init.trunc_normal_(m.weight, std=2e-5)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, Attention):
                for p in (m.rel_pos_h, m.rel_pos_w, m.relative_position_bias_table):
                    if p is not None:
                        nn.init.zeros_(p)
            elif isinstance(m, Block) and m.gamma_1 is not None:
                nn.init.constant_(m.gamma_1, m.init_values)
                nn.init.constant_(m.gamma_2, m.init_values)
        self._pos_cache.clear()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002
        self._pos_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> VisionTransformer:
        self._pos_cache.clear()
        return super().train(mode)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides 1-D tensors.

        ``pos_embed``, ``cls_token`` and (as BEiT / timm's Beit) every
        ``blocks.{i}.attn.relative_position_bias_table``.
        """
        names = {'pos_embed', 'cls_token'}
        if self.use_rel_pos_bias:
            names |= {f'blocks.{i}.attn.relative_position_bias_table' for i in range(self.depth)}
        return names

    def get_layer_depth(self, name: str, num_layers: int | None = None) -> tuple[int, int]:
        """Layer id of a parameter for layer-wise lr decay (BEiT / MAE convention).

        ``cls_token``, ``pos_embed``, ``patch_embed.*`` -> 0; ``blocks.k.*`` -> k + 1
        (including the block's rel-pos tables, BEiT bias table and layer scales
        ``gamma_1`` / ``gamma_2``); everything else (final norm, heads) -> ``depth + 1``.

        Args:
            name: Parameter name relative to this module.
            num_layers: Total layer ids; defaults to ``depth + 2``.

        Returns:
            (layer_id, num_layers).
        """
        num_layers = self.depth + 2 if num_layers is None else num_layers
        if name in ('cls_token', 'pos_embed', 'mask_token') or name.startswith('patch_embed'):
            return 0, num_layers
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    # ---------------------------------------------------------------- tokens
    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (H/p, W/p) of an image batch (B, C, H, W)."""
        return (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])

    def _resample_stored_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """The stored table resampled to ``grid``, unused leading slots dropped: (1, P + H*W, C).

        detectron2's ``get_abs_pos``: the class slot is set aside, the square grid is
        resampled bicubically (``align_corners=False``) when it differs from ``grid``.
        """
        pe = resample_pos_embed(
            self.pos_embed, grid, self.num_pos_prefix_tokens, self.pos_embed_grid
        )
        drop = self.num_pos_prefix_tokens - self.num_prefix_tokens
        return pe[:, drop:] if drop else pe

    def get_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding (1, P + H*W, C) for a patch grid, resampled and cached if needed.

        P is ``num_prefix_tokens`` (a stored class slot without class token is dropped).
        In training mode with a trainable table the resampling keeps the gradient and runs
        at every forward; otherwise the result is cached per grid.
        """
        key = tuple(grid)
        if key == self.pos_embed_grid:
            return self._resample_stored_pos(key)
        if self.pos_embed.requires_grad and self.training:
            return self._resample_stored_pos(key)
        cached = self._pos_cache.get(key)
        if cached is None or cached.device != self.pos_embed.device:
            with torch.no_grad():
                cached = self._resample_stored_pos(key)
            self._pos_cache[key] = cached
        return cached

    def patchify_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embedding, without prefix tokens: (B, N, C)."""
        grid = self.grid_of(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return tokens + self.get_pos_embed(grid)[:, self.num_prefix_tokens :]

    def prefix_tokens(self, batch: int) -> torch.Tensor | None:
        """Class token plus its position embedding, (B, 1, C), or None."""
        if self.cls_token is None:
            return None
        return (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)

    def _cat_extra_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Position-embedded patch tokens (B, N, C) -> block input (B, T, C).

        The one override point of token preparation: the base class prepends the class
        token (with its position); a subclass with more tokens (e.g. DeiT's distillation
        token) overrides this and sets ``num_lead_tokens`` / ``num_trail_tokens``.
        """
        prefix = self.prefix_tokens(x.shape[0])
        if prefix is None:
            return x
        return torch.cat([prefix, x], dim=1)

    def prepare_tokens(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """Images -> block input tokens, used by every forward path.

        Patch embedding + position (:meth:`patchify_embed`), then MAE's random masking when
        ``mask_ratio`` is given (0 keeps every patch but still shuffles them, as MAE), then
        the extra tokens (:meth:`_cat_extra_tokens`).

        Args:
            imgs: (B, C_in, H, W).
            mask_ratio: Fraction of masked patches; None: no masking, original order.
            noise: (B, N) masking noise shared with another model.

        Returns:
            (tokens (B, T, C), None or (mask (B, N), ids_restore (B, N), ids_keep (B, V))).
        """
        x = self.patchify_embed(imgs)
        masking = None
        if mask_ratio is not None:
            x, mask, ids_restore, ids_keep = random_masking(x, mask_ratio, noise)
            masking = (mask, ids_restore, ids_keep)
        return self._cat_extra_tokens(x), masking

    def split_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tokens (B, T, C) -> (extra tokens (B, T - N, C), patch tokens (B, N, C))."""
        lead, trail = self.num_lead_tokens, self.num_trail_tokens
        end = x.shape[1] - trail
        patches = x[:, lead:end]
        if not trail:
            return x[:, :lead], patches
        return torch.cat([x[:, :lead], x[:, end:]], dim=1), patches

    def _needs_grid(self) -> bool:
        """Some block reads tokens as the image grid (windows, rel-pos, BEiT bias)."""
        return self.use_rel_pos_bias or any(blk.needs_grid for blk in self.blocks)

    def _check_unmasked(self, what: str) -> None:
        if self._needs_grid():
            raise ValueError(
                f'{what} masks and shuffles the patch tokens, which window attention and '
                'relative positions cannot take (they need the full grid in order)'
            )

    # ---------------------------------------------------------------- blocks
    def _run_blocks(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        *,
        stop: int | None = None,
        qkv_blocks: Sequence[int] = (),
        taps: Sequence[int] = (),
    ) -> tuple[torch.Tensor, dict[int, QKV], dict[int, torch.Tensor]]:
        """The one block loop (activation-checkpointed per block with ``act_checkpoint``).

        Args:
            x: Block input (B, T, C) from :meth:`prepare_tokens`.
            grid: Patch grid (H, W) of the image (windowed / rel-pos blocks need it).
            stop: Run only the first ``stop`` blocks (None: all).
            qkv_blocks: Block indices (negative from the end) whose q/k/v are returned.
            taps: Block indices (non-negative) whose outputs are returned.

        Returns:
            (tokens after the last block run (B, T, C), {block: QKV}, {block: (B, T, C)}).
        """
        n = len(self.blocks)
        wanted = {i % n for i in qkv_blocks}
        tap = set(taps)
        qkv: dict[int, QKV] = {}
        outs: dict[int, torch.Tensor] = {}
        ckpt = self.act_checkpoint and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks[: n if stop is None else stop]):
            if ckpt:
                out = torch.utils.checkpoint.checkpoint(
                    blk, x, return_qkv=i in wanted, grid=grid, use_reentrant=False
                )
            else:
                out = blk(x, return_qkv=i in wanted, grid=grid)
            if i in wanted:
                x, qkv[i] = out
            else:
                x = out
            if i in tap:
                outs[i] = x
        return x, qkv, outs

    # --------------------------------------------------------------- forward
    def make_noise(self, imgs: torch.Tensor) -> torch.Tensor:
        """Uniform masking noise (B, N) for the patch grid of ``imgs``."""
        gh, gw = self.grid_of(imgs)
        return torch.rand(imgs.shape[0], gh * gw, device=imgs.device)

    def forward_encoder(
        self,
        imgs: torch.Tensor,
        mask_ratio: float = 0.75,
        noise: torch.Tensor | None = None,
        qkv_blocks: Sequence[int] = (),
        latent_block: int | None = None,
        num_blocks: int | None = None,
    ) -> MAEEncoderOutput:
        """Encode the visible patches.

        Args:
            imgs: (B, C, H, W).
            mask_ratio: Fraction of masked patches (0 keeps all).
            noise: (B, N) masking noise shared with another model.
            qkv_blocks: Block indices whose q/k/v are returned.
            latent_block: Index of the block whose (normed) output feeds the decoder
                (D2-MAE uses an early block); default the last block run.
            num_blocks: Run only the first ``num_blocks`` blocks (teacher taps).

        Returns:
            :class:`MAEEncoderOutput`.
        """
        self._check_unmasked('forward_encoder')
        x, (mask, ids_restore, ids_keep) = self.prepare_tokens(imgs, mask_ratio, noise)
        run = self.depth if num_blocks is None else num_blocks
        if not 1 <= run <= self.depth:
            raise ValueError(f'num_blocks must be in [1, {self.depth}], got {num_blocks}')
        latent_at = run - 1 if latent_block is None else latent_block % self.depth
        if latent_at >= run:
            raise ValueError(f'latent_block {latent_block} is not among the {run} blocks run')
        x, taps, outs = self._run_blocks(
            x, self.grid_of(imgs), stop=run, qkv_blocks=qkv_blocks, taps=(latent_at,)
        )
        latent = self.norm(outs[latent_at])
        return MAEEncoderOutput(latent, x, mask, ids_restore, ids_keep, taps)

    def forward_block_qkv(
        self,
        x: torch.Tensor,
        index: int,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> QKV:
        """q/k/v of block ``index``, running nothing after its qkv projection.

        Args:
            x: Images (B, C_in, H, W).
            index: Block index (negative from the end).
            mask_ratio: Keep only the visible patches of MAE masking (0: the full image).
            noise: (B, N) masking noise shared with another model.
        """
        index = index % self.depth
        if mask_ratio > 0:
            self._check_unmasked('forward_block_qkv with mask_ratio > 0')
        grid = self.grid_of(x)
        tokens, _ = self.prepare_tokens(x, mask_ratio if mask_ratio > 0 else None, noise)
        tokens, _, _ = self._run_blocks(tokens, grid, stop=index)
        return self.blocks[index].forward_qkv(tokens, grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> normed tokens (B, P + N, C)."""
        tokens, _ = self.prepare_tokens(x)
        tokens, _, _ = self._run_blocks(tokens, self.grid_of(x))
        return self.norm(tokens)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs, with timm's ``VisionTransformer.forward_intermediates`` contract.

        Args:
            x: Images (B, C_in, H, W).
            indices: None (every block), an int n (the last n blocks) or block indices
                (negative from the end); returned in block order.
            return_prefix_tokens: Return ``(patch tokens, extra tokens)`` pairs (the extra
                tokens (B, T - N, C): class token, distillation token).
            norm: Apply the final norm to every intermediate.
            stop_early: Stop after the last block needed.
            output_fmt: ``'NCHW'`` (B, C, H/p, W/p) or ``'NLC'`` (B, N, C) patch tokens.
            intermediates_only: Return only the list.

        Returns:
            The list of intermediates, or ``(final normed tokens (B, T, C), list)``.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = _take_indices(len(self.blocks), indices)
        grid = self.grid_of(x)
        tokens, _ = self.prepare_tokens(x)
        stop = take[-1] + 1 if stop_early else None
        tokens, _, outs = self._run_blocks(tokens, grid, stop=stop, taps=take)
        inter = [self.norm(outs[i]) if norm else outs[i] for i in take]
        split = [self.split_tokens(y) for y in inter]
        patches = [p for _, p in split]
        if output_fmt == 'NCHW':
            b = x.shape[0]
            patches = [
                p.reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous() for p in patches
            ]
        result: list = patches
        if return_prefix_tokens:
            result = list(zip(patches, [e for e, _ in split]))
        if intermediates_only:
            return result
        return self.norm(tokens), result

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks (and optionally norm / head) that ``indices`` do not need (timm API).

        Returns:
            The absolute block indices kept for :meth:`forward_intermediates`.
        """
        take = _take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: take[-1] + 1]
        self.depth = len(self.blocks)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, '')
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (B, P + N, C) and apply the classifier."""
        if self.global_pool == 'avg':
            x = self.split_tokens(x)[1].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes) (or pooled features if no head)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (timm API)."""
        if global_pool is not None:
            if global_pool not in ('token', 'avg', ''):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
