"""The one Vision Transformer of g2sd (timm / MAE state-dict key layout).

Every stage of Generic-to-Specific Distillation (G2SD, Huang et al., CVPR 2023,
arXiv 2302.14771) uses this class: the MAE encoder (teacher and student), the
classification backbone, and the base of the detection / segmentation adapters.
Keys are exactly those of timm's ``VisionTransformer`` and of the MAE release
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm`` / ``fc_norm``, ``head``), so one
checkpoint feeds every task without conversion.

Design follows timm's ``vision_transformer.py`` (Apache-2.0) and MAE's
``models_vit.py`` (CC-BY-NC 4.0); the code here is our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from g2sd.layers.pos_embed import get_2d_sincos_pos_embed, resample_pos_embed, to_2tuple

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


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (keys ``qkv``, ``proj``).

    The forward pass uses PyTorch's fused ``scaled_dot_product_attention``. With
    ``return_qkv=True`` it also returns q, k and v (each (B, heads, N, head_dim)) so a
    distiller can form attention logits or relations for the one block it needs.

    Args:
        dim: Channels C.
        num_heads: Heads; ``dim`` must be divisible by it.
        qkv_bias: Bias on the qkv projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def get_qkv(self, x: torch.Tensor) -> QKV:
        """(B, N, C) -> q, k, v each (B, heads, N, head_dim), without attending."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return QKV(*qkv.unbind(0))

    def forward(
        self, x: torch.Tensor, return_qkv: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, QKV]:
        """(B, N, C) -> (B, N, C) [, QKV]."""
        b, n, c = x.shape
        q, k, v = self.get_qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if return_qkv:
            return out, QKV(q, k, v)
        return out


class Block(nn.Module):
    """Pre-norm transformer block (keys ``norm1``, ``attn``, ``norm2``, ``mlp``).

    Args:
        dim: Channels C.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        qkv_bias: Bias on the qkv projection.
        drop_path: Stochastic depth probability.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, return_qkv: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, QKV]:
        """(B, N, C) -> (B, N, C) [, QKV of this block]."""
        if return_qkv:
            a, qkv = self.attn(self.norm1(x), return_qkv=True)
        else:
            a, qkv = self.attn(self.norm1(x)), None
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, qkv) if return_qkv else x

    def forward_qkv(self, x: torch.Tensor) -> QKV:
        """Only ``norm1`` and the qkv projection of this block: (B, N, C) -> QKV."""
        return self.attn.get_qkv(self.norm1(x))


class VisionTransformer(nn.Module):
    """Vision Transformer with the timm / MAE key layout.

    Position embeddings are stored for the grid of ``img_size`` and resampled on the fly
    (cached per grid) for other input sizes, so one checkpoint serves 224 px
    classification, 512 px segmentation and 1024 px detection.

    Args:
        img_size: Nominal input size (fixes the stored position grid).
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
    ) -> None:
        super().__init__()
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ('sincos', 'learn'):
            raise ValueError(f"pos_embed must be 'sincos' or 'learn', got {pos_embed!r}")
        if depth < 1:
            raise ValueError(f'depth must be >= 1, got {depth}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_prefix_tokens = 1 if class_token else 0
        self.pos_embed_type = pos_embed

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.patch_size = self.patch_embed.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_pos = self.patch_embed.num_patches + self.num_prefix_tokens
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
        self.blocks = nn.ModuleList(
            Block(embed_dim, heads[i], mlp_ratio, qkv_bias, dpr[i], norm_eps) for i in range(depth)
        )
        use_fc_norm = global_pool == 'avg' if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """MAE initialisation: sin-cos position table, xavier-uniform linears and patch conv."""
        grid = self.patch_embed.grid_size
        pe = get_2d_sincos_pos_embed(self.embed_dim, grid, cls_token=self.cls_token is not None)
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
        self._pos_cache.clear()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002
        self._pos_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> VisionTransformer:
        self._pos_cache.clear()
        return super().train(mode)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides 1-D tensors."""
        return {'pos_embed', 'cls_token'}

    def get_layer_depth(self, name: str, num_layers: int | None = None) -> tuple[int, int]:
        """Layer id of a parameter for layer-wise lr decay (BEiT / MAE convention).

        ``cls_token``, ``pos_embed``, ``patch_embed.*`` -> 0; ``blocks.k.*`` -> k + 1;
        everything else (final norm, heads) -> ``depth + 1``.

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

    # --------------------------------------------------------------- forward
    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (H/p, W/p) of an image batch (B, C, H, W)."""
        return (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])

    def get_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding (1, P + H*W, C) for a patch grid, resampled and cached if needed."""
        if tuple(grid) == self.patch_embed.grid_size:
            return self.pos_embed
        if self.pos_embed.requires_grad and self.training:
            return resample_pos_embed(
                self.pos_embed, grid, self.num_prefix_tokens, self.patch_embed.grid_size
            )
        key = tuple(grid)
        cached = self._pos_cache.get(key)
        if cached is None or cached.device != self.pos_embed.device:
            with torch.no_grad():
                cached = resample_pos_embed(
                    self.pos_embed, grid, self.num_prefix_tokens, self.patch_embed.grid_size
                )
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

    def forward_blocks(
        self, x: torch.Tensor, qkv_blocks: Sequence[int] = ()
    ) -> tuple[torch.Tensor, dict[int, QKV]]:
        """Run all blocks; return the tokens and the q/k/v of the requested block indices."""
        taps: dict[int, QKV] = {}
        wanted = {i % self.depth for i in qkv_blocks}
        for i, blk in enumerate(self.blocks):
            if i in wanted:
                x, taps[i] = blk(x, return_qkv=True)
            else:
                x = blk(x)
        return x, taps

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
        x = self.patchify_embed(imgs)
        x, mask, ids_restore, ids_keep = random_masking(x, mask_ratio, noise)
        prefix = self.prefix_tokens(x.shape[0])
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        run = self.depth if num_blocks is None else num_blocks
        if not 1 <= run <= self.depth:
            raise ValueError(f'num_blocks must be in [1, {self.depth}], got {num_blocks}')
        latent_at = run - 1 if latent_block is None else latent_block % self.depth
        wanted = {i % self.depth for i in qkv_blocks}
        taps: dict[int, QKV] = {}
        latent = None
        for i, blk in enumerate(self.blocks[:run]):
            if i in wanted:
                x, taps[i] = blk(x, return_qkv=True)
            else:
                x = blk(x)
            if i == latent_at:
                latent = self.norm(x)
        if latent is None:
            raise ValueError(f'latent_block {latent_block} is not among the {run} blocks run')
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
        tokens = self.patchify_embed(x)
        if mask_ratio > 0:
            tokens = random_masking(tokens, mask_ratio, noise)[0]
        prefix = self.prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        for blk in self.blocks[:index]:
            tokens = blk(tokens)
        return self.blocks[index].forward_qkv(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> normed tokens (B, P + N, C)."""
        tokens = self.patchify_embed(x)
        prefix = self.prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        tokens, _ = self.forward_blocks(tokens)
        return self.norm(tokens)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int], norm: bool = False
    ) -> list[torch.Tensor]:
        """Token outputs (B, P + N, C) of the given blocks (negative indices allowed).

        Args:
            x: Images (B, C_in, H, W).
            indices: Block indices whose outputs are returned, in the order given.
            norm: Apply the final norm to every returned tensor.
        """
        wanted = [i % self.depth for i in indices]
        tokens = self.patchify_embed(x)
        prefix = self.prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        outs: dict[int, torch.Tensor] = {}
        last = max(wanted)
        for i, blk in enumerate(self.blocks[: last + 1]):
            tokens = blk(tokens)
            if i in wanted:
                outs[i] = self.norm(tokens) if norm else tokens
        return [outs[i] for i in wanted]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (B, P + N, C) and apply the classifier."""
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes) (or pooled features if no head)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (timm API)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
