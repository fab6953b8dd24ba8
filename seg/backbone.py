"""Segmentation backbone of the G2SD UperNets: the one ViT with the official BEiT-style options.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) fine-tunes and distils its segmentation students with UperNet on ADE20K,
on the backbone of its ``G2SD_seg_dis/src/backbone/mae.py`` (the MAE / BEiT segmentation
backbone; Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022): class
token, learned absolute position embedding (resampled from the pre-training grid when the
checkpoint is loaded), a relative position bias per block (zero-initialised: MAE never
trained one), layer scale initialised to 1.0, no final norm, linear stochastic depth 0.1,
and the patch tokens of four blocks as maps for the pyramid neck (mmseg's
``Feature2Pyramid``). This module only changes the defaults and the output of
:class:`g2sd.models.vit.VisionTransformer`, so its keys are the one ViT's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from g2sd.checkpoint import load_pretrained
from g2sd.models.vit import VisionTransformer
from g2sd.registry import MODELS

__all__ = ['SegViTBackbone']

# Options the official seg backbone fixes (ours are forced to them).
_FORCED = (
    ('class_token', True),
    ('num_classes', 0),
    ('global_pool', ''),
    ('final_norm', False),
    ('pos_embed', 'learn'),
    ('qkv_bias', True),
    ('norm_eps', 1e-6),
)


@MODELS.register_module()
class SegViTBackbone(VisionTransformer):
    """BEiT-style ViT backbone of the G2SD UperNets: the patch tokens of ``out_indices`` as maps.

    Same parameters and keys as :class:`g2sd.models.vit.VisionTransformer`: ``cls_token``,
    ``pos_embed`` (1, 1 + (H/p)(W/p), C), ``patch_embed.proj.*``, ``blocks.{i}.{norm1,
    attn.qkv, attn.proj, attn.relative_position_bias_table, gamma_1, gamma_2, norm2,
    mlp.fc1, mlp.fc2}``; the bias table of a block is ((2H/p - 1)(2W/p - 1) + 3, heads), its
    index a derived, non-persistent buffer. Paper ViT-S: ``embed_dim=384, num_heads=6,
    out_indices=(3, 5, 7, 11)`` at ``img_size=512``.

    Differences from the official ``mae.py``: q / k / v biases are one fused ``attn.qkv.bias``
    (the official code has ``q_bias`` / ``v_bias`` and no key bias; a key bias adds the same
    value to every logit of a query, so the attention is the same), and the pyramid is the
    neck (mmseg's ``Feature2Pyramid``), not part of the backbone.

    Args:
        img_size: Input size (the grid of the stored position table and of the bias tables;
            inputs must have this grid when ``use_rel_pos_bias``).
        patch_size: Patch side (the output stride).
        in_chans: Input channels.
        embed_dim: Channels C.
        depth: Number of blocks.
        num_heads: Attention heads.
        out_indices: Blocks whose outputs are returned, in this order (ints in
            ``[0, depth)``, non-empty).
        use_rel_pos_bias: BEiT relative position bias in every block (zero-initialised).
        init_values: Layer-scale initial value of ``gamma_1`` / ``gamma_2``; None: no layer
            scale.
        drop_path_rate: Stochastic depth rate (linear over the blocks).
        pretrained: Checkpoint loaded by :meth:`init_weights` (any format the g2sd loader
            knows: MAE, G2SD GD students / distillers, timm, mm backbones); None: none.
        pretrained_use: Loader use (:func:`g2sd.checkpoint.load_pretrained`); ``'backbone'``
            drops decoder / projector keys, resamples ``pos_embed`` (e.g. 14x14 -> 32x32) and
            bias tables, and lets the bias tables and layer scales start at their init.
        pretrained_allow_missing: Extra fnmatch patterns of model keys the checkpoint may
            lack.
        **kwargs: Other :class:`~g2sd.models.vit.VisionTransformer` options (``mlp_ratio``,
            ``act_checkpoint``, ...). ``class_token=True``, ``num_classes=0``,
            ``global_pool=''``, ``final_norm=False``, ``pos_embed='learn'``,
            ``qkv_bias=True`` and ``norm_eps=1e-6`` are forced.

    Shapes:
        ``forward``: (B, in_chans, H, W) -> ``len(out_indices)`` maps (B, C, H/p, W/p).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 512,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        use_rel_pos_bias: bool = True,
        init_values: float | None = 1.0,
        drop_path_rate: float = 0.1,
        pretrained: str | None = None,
        pretrained_use: str = 'backbone',
        pretrained_allow_missing: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        for name, value in _FORCED:
            if name in kwargs and kwargs[name] != value:
                raise ValueError(
                    f'SegViTBackbone fixes {name}={value!r} (the official seg backbone), '
                    f'got {name}={kwargs[name]!r}'
                )
            kwargs[name] = value
        if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
            raise ValueError(
                f'out_indices must be a sequence of block indices, got {out_indices!r}'
            )
        indices = tuple(out_indices)
        if not indices:
            raise ValueError('out_indices must name at least one block, got ()')
        bad = [
            i
            for i in indices
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth
        ]
        if bad:
            raise ValueError(
                f'out_indices {indices}: {bad} are not block indices in [0, {depth}) '
                f'(depth={depth})'
            )
        if not isinstance(use_rel_pos_bias, bool):
            raise ValueError(f'use_rel_pos_bias must be a bool, got {use_rel_pos_bias!r}')
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a path or None, got {pretrained!r}')
        if not isinstance(pretrained_use, str):
            raise TypeError(f'pretrained_use must be a str, got {pretrained_use!r}')
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            use_rel_pos_bias=use_rel_pos_bias,
            init_values=init_values,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        self.out_indices = indices
        self.pretrained = pretrained
        self.pretrained_use = pretrained_use
        self.pretrained_allow_missing = tuple(pretrained_allow_missing)

    def init_weights(self) -> None:
        """MAE initialisation, then ``pretrained`` (if given) via the g2sd loader.

        The load report (loaded / resampled ``pos_embed`` and bias tables / missing-but-allowed
        bias tables and layer scales / dropped decoder and projector parts) goes to the
        current mmengine logger; any other mismatch raises
        :class:`g2sd.checkpoint.CheckpointError`.
        """
        super().init_weights()
        pretrained = getattr(self, 'pretrained', None)  # unset while __init__ runs
        if not pretrained:
            return
        # the loader logs its one-screen report (to the train log inside a run)
        load_pretrained(
            self, pretrained, use=self.pretrained_use, allow_missing=self.pretrained_allow_missing
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, in_chans, H, W) -> the (B, C, H/p, W/p) patch tokens of ``out_indices``.

        Class token dropped, no norm (the official ``mae.py`` features).

        Raises:
            ValueError: With ``use_rel_pos_bias``, the input's patch grid is not the one of
                ``img_size`` (the bias tables are built for it).
        """
        grid = self.grid_of(x)
        if self.use_rel_pos_bias and grid != tuple(self.patch_embed.grid_size):
            raise ValueError(
                f'input {tuple(x.shape)} gives a {grid[0]}x{grid[1]} patch grid; the relative '
                'position bias of this backbone is built for '
                f'{self.patch_embed.grid_size[0]}x{self.patch_embed.grid_size[1]} '
                f'(img_size {self.patch_embed.img_size}): pad / crop the input (slide inference) '
                'or build the backbone for this size'
            )
        tokens, _ = self.prepare_tokens(x)
        take = sorted(set(self.out_indices))
        _, _, outs = self._run_blocks(tokens, grid, stop=take[-1] + 1, taps=take)
        b = x.shape[0]
        maps = []
        for i in self.out_indices:
            _, patches = self.split_tokens(outs[i])
            maps.append(patches.transpose(1, 2).reshape(b, -1, grid[0], grid[1]))
        return tuple(maps)
