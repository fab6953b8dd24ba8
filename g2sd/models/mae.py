"""Masked-autoencoder ViT (encoder + light decoder) for teachers and students.

The model of MAE (He et al., CVPR 2022) with the hooks that Generic-to-Specific
Distillation (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771) needs:

* random masking that accepts given ``noise`` so a teacher and a student share one mask;
* the decoder can stop after its first ``k`` blocks and skip ``decoder_norm`` (the G2SD
  target is the teacher's decoder residual stream after block k);
* the pixel head (``decoder_norm`` + ``decoder_pred``) is optional, so a G2SD student
  carries no parameter that its loss does not train.

State-dict keys are those of the official MAE release (``mask_token``,
``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks.{i}``, ``decoder_norm``,
``decoder_pred`` on top of the encoder keys of :class:`~g2sd.models.vit.VisionTransformer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from g2sd.models.vit import (
    Block,
    MAEEncoderOutput,
    VisionTransformer,
    get_2d_sincos_pos_embed,
    random_masking,
    resample_pos_embed,
)

__all__ = ['MAEEncoderOutput', 'MaskedAutoencoderViT', 'random_masking']


class MaskedAutoencoderViT(VisionTransformer):
    """MAE encoder-decoder on top of the one ViT.

    Args:
        img_size: Input size.
        patch_size: Patch side.
        in_chans: Input channels.
        embed_dim: Encoder channels.
        depth: Encoder blocks.
        num_heads: Encoder heads.
        decoder_embed_dim: Decoder channels.
        decoder_depth: Decoder blocks.
        decoder_num_heads: Decoder heads.
        mlp_ratio: MLP ratio of encoder and decoder.
        norm_pix_loss: Normalise each target patch by its mean / variance (MAE).
        pixel_head: Build ``decoder_norm`` and ``decoder_pred`` (needed for the pixel
            loss; a G2SD student does not use them).
        last_block_heads: Head count of the last encoder block if different (TinyMIM).
        drop_path_rate: Encoder stochastic depth.
        drop_path_mode: ``'linear'`` ramp or ``'constant'`` (TinyMIM) over blocks.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        pixel_head: bool = True,
        last_block_heads: int | None = None,
        drop_path_rate: float = 0.0,
        drop_path_mode: str = 'linear',
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool='',
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            drop_path_mode=drop_path_mode,
            last_block_heads=last_block_heads,
            pos_embed='sincos',
            fc_norm=False,
        )
        if decoder_depth < 0:
            raise ValueError(f'decoder_depth must be >= 0, got {decoder_depth}')
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_depth = decoder_depth
        num_patches = self.patch_embed.num_patches
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)
        )
        self.pixel_head = pixel_head
        if pixel_head:
            p = self.patch_size
            self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
            self.decoder_pred = nn.Linear(decoder_embed_dim, p[0] * p[1] * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        pe = get_2d_sincos_pos_embed(
            self.decoder_embed_dim, self.patch_embed.grid_size, cls_token=True
        )
        with torch.no_grad():
            self.decoder_pos_embed.copy_(pe.unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.pixel_head:
            nn.init.xavier_uniform_(self.decoder_pred.weight)
            nn.init.zeros_(self.decoder_pred.bias)

    def init_weights(self) -> None:
        """MAE initialisation of encoder and (when built) decoder."""
        super().init_weights()
        if hasattr(self, 'decoder_embed'):
            self._init_decoder()

    # ------------------------------------------------------------- helpers
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C) in MAE's (p, q, c) order."""
        ph, pw = self.patch_size
        b, c, h, w = imgs.shape
        gh, gw = h // ph, w // pw
        x = imgs.reshape(b, c, gh, ph, gw, pw)
        x = torch.einsum('nchpwq->nhwpqc', x)
        return x.reshape(b, gh * gw, ph * pw * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W)."""
        ph, pw = self.patch_size
        gh, gw = grid or self.patch_embed.grid_size
        b = x.shape[0]
        c = x.shape[-1] // (ph * pw)
        x = x.reshape(b, gh, gw, ph, pw, c)
        x = torch.einsum('nhwpqc->nchpwq', x)
        return x.reshape(b, c, gh * ph, gw * pw)

    # ------------------------------------------------------------ decoder
    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        num_blocks: int | None = None,
        predict: bool = True,
    ) -> torch.Tensor:
        """Decode: embed, insert mask tokens, unshuffle, run decoder blocks.

        Args:
            latent: (B, 1 + V, C) encoder output.
            ids_restore: (B, N) from the encoder.
            num_blocks: Run only the first ``num_blocks`` decoder blocks (G2SD tap ``k``).
            predict: Apply ``decoder_norm`` + ``decoder_pred`` and drop the cls token
                (pixel predictions (B, N, p*p*C)); else return the raw residual stream
                (B, 1 + N, C_dec) after the blocks run.
        """
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, n + 1 - x.shape[1], -1).to(x.dtype)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1)
        x = x + self._decoder_pos(n)
        run = self.decoder_depth if num_blocks is None else num_blocks
        if not 0 <= run <= self.decoder_depth:
            raise ValueError(f'decoder num_blocks must be in [0, {self.decoder_depth}], got {run}')
        for blk in self.decoder_blocks[:run]:
            x = blk(x)
        if not predict:
            return x
        if not self.pixel_head:
            raise RuntimeError('this MAE was built with pixel_head=False; it cannot predict pixels')
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def _decoder_pos(self, n: int) -> torch.Tensor:
        if n + 1 == self.decoder_pos_embed.shape[1]:
            return self.decoder_pos_embed
        side = int(n**0.5)
        return resample_pos_embed(self.decoder_pos_embed, (side, n // side), 1)

    # --------------------------------------------------------------- loss
    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MAE loss: per-patch MSE (optionally on normalised pixels), mean over masked patches.

        Args:
            imgs: (B, C, H, W).
            pred: (B, N, p*p*C).
            mask: (B, N), 1 = masked.
        """
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE pre-training forward: (loss, pred (B, N, p*p*C), mask (B, N))."""
        enc = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(enc.latent, enc.ids_restore)
        return self.forward_loss(imgs, pred, enc.mask), pred, enc.mask
