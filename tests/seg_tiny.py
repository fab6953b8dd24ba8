"""One tiny UperNet segmentor config for the seg tests (CPU-fast; shared, not repeated)."""

from __future__ import annotations

from typing import Any

TINY_CLASSES = 5
TINY_IMG = 32  # crop / rel-pos-bias grid: 32 / patch 4 = 8x8 tokens


def tiny_backbone(**overrides: Any) -> dict:
    """A 32-d, 4-block, patch-4 ``g2sd.SegViTBackbone`` (gray input) with the paper options."""
    cfg = dict(
        type='g2sd.SegViTBackbone',
        img_size=TINY_IMG,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=4,
        num_heads=2,
        out_indices=(0, 1, 2, 3),
        use_rel_pos_bias=True,
        init_values=1.0,
        drop_path_rate=0.1,
    )
    cfg.update(overrides)
    return cfg


def tiny_segmentor(
    embed_dim: int = 32,
    num_classes: int = TINY_CLASSES,
    backbone: dict | None = None,
    auxiliary: bool = True,
    mode: str = 'whole',
    crop: int = TINY_IMG,
    stride: int = 24,
) -> dict:
    """mmseg ``EncoderDecoder``: backbone -> Feature2Pyramid -> UPerHead (+ FCN aux head).

    Args:
        embed_dim: Backbone channels (UPerHead channels = embed_dim, as in the paper).
        num_classes: Classes K of both heads.
        backbone: Backbone config; default :func:`tiny_backbone` with ``embed_dim``.
        auxiliary: Add the auxiliary FCNHead on level 2 (weight 0.4).
        mode: ``test_cfg.mode`` (``'whole'`` or ``'slide'``).
        crop: Slide crop side.
        stride: Slide stride.
    """
    norm_cfg = dict(type='BN', requires_grad=True)
    if backbone is None:
        backbone = tiny_backbone(embed_dim=embed_dim)
    cfg = dict(
        type='EncoderDecoder',
        _scope_='mmseg',
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[72.93],
            std=[90.02],
            bgr_to_rgb=False,
            pad_val=0,
            seg_pad_val=255,
            size=(TINY_IMG, TINY_IMG),
        ),
        backbone=backbone,
        neck=dict(
            type='Feature2Pyramid', embed_dim=embed_dim, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg
        ),
        decode_head=dict(
            type='UPerHead',
            in_channels=[embed_dim] * 4,
            in_index=[0, 1, 2, 3],
            pool_scales=(1, 2, 3, 6),
            channels=embed_dim,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode=mode, crop_size=(crop, crop), stride=(stride, stride))
        if mode == 'slide'
        else dict(mode='whole'),
    )
    if auxiliary:
        cfg['auxiliary_head'] = dict(
            type='FCNHead',
            in_channels=embed_dim,
            in_index=2,
            channels=16,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
        )
    return cfg
