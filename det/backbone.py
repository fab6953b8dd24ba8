"""ViTDet backbone of the G2SD detectors: the one ViT with detectron2's ViTDet defaults.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) fine-tunes and distils its detection students on ViTDet (Li et al.,
"Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022). This
module only changes the defaults and the output of :class:`g2sd.models.vit.VisionTransformer`
(no head, no class token, no final norm, learned position table stored at the pre-training
grid with a class slot), so its keys are those of detectron2's ``backbone.net.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from g2sd.checkpoint import load_pretrained
from g2sd.models.vit import VisionTransformer
from g2sd.registry import MODELS

__all__ = ['ViTDetBackbone']


@MODELS.register_module()
class ViTDetBackbone(VisionTransformer):
    """Plain ViT backbone of ViTDet: one feature map (B, C, H/p, W/p) of the last block.

    Same parameters and keys as :class:`g2sd.models.vit.VisionTransformer` (``patch_embed``,
    ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,
    norm2,mlp.fc1,mlp.fc2}``), with ViTDet's defaults. Paper ViT-B: ``img_size=1024,
    pretrain_img_size=224, pretrain_use_cls_token=True, window_size=14,
    global_attn_indexes=(2, 5, 8, 11), use_rel_pos=True, drop_path_rate=0.1``.

    Args:
        img_size: Detector input size (grid of the global blocks' rel-pos tables).
        patch_size: Patch side (the output stride).
        embed_dim: Channels C.
        depth: Number of blocks.
        num_heads: Attention heads.
        window_size: Window side of the windowed blocks; 0: all global.
        global_attn_indexes: Blocks with global attention.
        use_rel_pos: Decomposed relative position in every block.
        pretrain_img_size: Image size of the stored position table (MAE pre-training).
        pretrain_use_cls_token: The stored table has a leading class slot (MAE layout).
        drop_path_rate: Stochastic depth rate.
        pretrained: Checkpoint loaded by :meth:`init_weights` (any format the g2sd loader
            knows: MAE, G2SD GD students / distillers, timm, mm backbones); None: none.
        pretrained_use: Loader use (:func:`g2sd.checkpoint.load_pretrained`); ``'backbone'``
            drops decoder / projector keys and lets the new rel-pos tables start at zero.
        pretrained_allow_missing: Extra fnmatch patterns of model keys the checkpoint may
            lack.
        **kwargs: Other :class:`~g2sd.models.vit.VisionTransformer` options (``mlp_ratio``,
            ``qkv_bias``, ``norm_eps``, ``act_checkpoint``, ...).

    Shapes:
        ``forward``: (B, 3, H, W) -> ((B, C, H/p, W/p),).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        use_rel_pos: bool = True,
        pretrain_img_size: int | None = 224,
        pretrain_use_cls_token: bool = True,
        drop_path_rate: float = 0.1,
        pretrained: str | None = None,
        pretrained_use: str = 'backbone',
        pretrained_allow_missing: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ('num_classes', 0),
            ('global_pool', ''),
            ('class_token', False),
            ('final_norm', False),
            ('pos_embed', 'learn'),
        ):
            kwargs.setdefault(name, value)
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a path or None, got {pretrained!r}')
        if not isinstance(pretrained_use, str):
            raise TypeError(f'pretrained_use must be a str, got {pretrained_use!r}')
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            window_size=window_size,
            global_attn_indexes=global_attn_indexes,
            use_rel_pos=use_rel_pos,
            pretrain_img_size=pretrain_img_size,
            pretrain_use_cls_token=pretrain_use_cls_token,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        self.pretrained = pretrained
        self.pretrained_use = pretrained_use
        self.pretrained_allow_missing = tuple(pretrained_allow_missing)

    def init_weights(self) -> None:
        """MAE initialisation, then ``pretrained`` (if given) via the g2sd loader.

        The load report (loaded / missing-but-allowed rel-pos tables / dropped decoder and
        projector parts / the ignored pre-training ``cls_token``) goes to the current
        mmengine logger; any other mismatch raises :class:`g2sd.checkpoint.CheckpointError`.
        """
        super().init_weights()
        pretrained = getattr(self, 'pretrained', None)  # unset while __init__ runs
        if not pretrained:
            return
        # ViTDet drops the pre-training class token (the 'backbone' use ignores
        # ``cls_token`` for models without one, as detectron2 does); its position slot
        # stays in ``pos_embed`` (``pretrain_use_cls_token``).
        # the loader logs its one-screen report (to the train log inside a run)
        load_pretrained(
            self, pretrained, use=self.pretrained_use, allow_missing=self.pretrained_allow_missing
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        """(B, 3, H, W) -> ((B, C, H/p, W/p),): the last block's tokens as a map."""
        grid = self.grid_of(x)
        tokens, _ = self.prepare_tokens(x)
        tokens, _, _ = self._run_blocks(tokens, grid)
        _, patches = self.split_tokens(tokens)
        b, _, c = patches.shape
        return (patches.transpose(1, 2).reshape(b, c, grid[0], grid[1]),)
