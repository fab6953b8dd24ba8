# UperNet on the BEiT-style ViT as used by G2SD's segmentation stage (Huang et al.,
# "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771;
# official code G2SD_seg_dis = mmseg 0.x + backbone/mae.py; reference/g2sd.md section 5.2):
# ViT at 512 (abs pos embed resampled 14x14 -> 32x32 on load, zero-init relative position bias
# per block, layer scale init 1.0, drop path 0.1, no final norm), outputs of blocks
# [3, 5, 7, 11] through mmseg's Feature2Pyramid (x4 / x2 / x1 / x0.5), UPerHead with
# channels = embed dim, pool scales (1, 2, 3, 6), dropout 0.1, and an auxiliary FCNHead on
# level 2 (256 channels, 1 conv, weight 0.4); SyncBN in neck and heads; 150 ADE20K classes.
# This file: ViT-B (the MAE-B teacher); the S / Ti students below. Children set
# `model.backbone.pretrained` (or `model.student.backbone.pretrained`).
norm_cfg = dict(type='SyncBN', requires_grad=True)
num_classes = 150
seg_crop_size = (512, 512)
vit_b_backbone = dict(
    type='g2sd.SegViTBackbone',
    img_size=512,
    patch_size=16,
    in_chans=3,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    out_indices=(3, 5, 7, 11),
    use_rel_pos_bias=True,
    init_values=1.0,
    drop_path_rate=0.1,
    pretrained=None,
    pretrained_use='backbone',
)
# G2SD students: same architecture (official distill_cwd.py / distill_cwd_b2t.py).
vit_s_backbone = dict(vit_b_backbone, embed_dim=384, num_heads=6)
vit_ti_backbone = dict(vit_b_backbone, embed_dim=192, num_heads=3)
seg_data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=seg_crop_size,  # pads every training crop to 512 (the official Pad(512))
)
upernet_b_segmentor = dict(
    type='EncoderDecoder',
    # mmseg builds its inner parts unprefixed (ConvModule norms, losses): build in scope mmseg
    _scope_='mmseg',
    data_preprocessor=seg_data_preprocessor,
    backbone=vit_b_backbone,
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    # official test: single scale, slide crop 512 stride 341 (mmseg's own MAE config: 256)
    test_cfg=dict(mode='slide', crop_size=seg_crop_size, stride=(341, 341)),
)


def _dims(segmentor, backbone):
    """The segmentor with another backbone width C: neck, UPerHead (channels = C), aux in C."""
    c = backbone['embed_dim']
    return dict(
        segmentor,
        backbone=backbone,
        neck=dict(segmentor['neck'], embed_dim=c),
        decode_head=dict(segmentor['decode_head'], in_channels=[c] * 4, channels=c),
        auxiliary_head=dict(segmentor['auxiliary_head'], in_channels=c),
    )


upernet_s_segmentor = _dims(upernet_b_segmentor, vit_s_backbone)
upernet_ti_segmentor = _dims(upernet_b_segmentor, vit_ti_backbone)
model = upernet_b_segmentor
# Initialisations (override with --cfg-options model[.student].backbone.pretrained=PATH).
# GD / MAE students: tools/train.py outputs of configs/pretrain (the paths of the cls and det
# configs); the official releases (ViT_Sm_GD.pth, ViT_Ti_GD.pth) load the same way.
gd_s_checkpoint = 'work_dirs/g2sd-gd_vit-s_mae-b_8xb256-accum2-300e_in1k/student_vit-s_g2sd-gd.pth'
gd_ti_checkpoint = (
    'work_dirs/g2sd-gd_vit-ti_mae-b_8xb256-accum2-300e_in1k/student_vit-ti_g2sd-gd.pth'
)
mae_s_checkpoint = 'work_dirs/mae_vit-s_8xb256-accum2-300e_in1k/mae_vit-s.pth'
mae_ti_checkpoint = 'work_dirs/mae_vit-ti_8xb256-accum2-300e_in1k/mae_vit-ti.pth'
mae_b_pretrain_checkpoint = 'checkpoints/mae_pretrain_vit_base.pth'
# The G2SD segmentation teacher: mmseg model zoo MAE-B UperNet 160k (48.13 mIoU), mmseg
# layout, read by the 'segmentor' loader (converted to this backbone's keys, tables resampled):
# https://download.openmmlab.com/mmsegmentation/v0.5/mae/upernet_mae-base_fp16_8x2_512x512_160k_ade20k/upernet_mae-base_fp16_8x2_512x512_160k_ade20k_20220426_174752-f92a2975.pth
upernet_b_teacher_checkpoint = (
    'checkpoints/mmseg/upernet_mae-base_fp16_8x2_512x512_160k_ade20k_20220426_174752-f92a2975.pth'
)


def _init(segmentor, path):
    return dict(segmentor, backbone=dict(segmentor['backbone'], pretrained=path))


upernet_s_gd = _init(upernet_s_segmentor, gd_s_checkpoint)
upernet_ti_gd = _init(upernet_ti_segmentor, gd_ti_checkpoint)
upernet_s_mae = _init(upernet_s_segmentor, mae_s_checkpoint)
upernet_ti_mae = _init(upernet_ti_segmentor, mae_ti_checkpoint)
upernet_b_mae = _init(upernet_b_segmentor, mae_b_pretrain_checkpoint)
# The teacher is loaded whole by DistillModel (teacher_checkpoint): no backbone init, no drop path.
upernet_b_teacher = dict(
    upernet_b_segmentor, backbone=dict(vit_b_backbone, drop_path_rate=0.0, pretrained=None)
)
# The same teacher on mmseg's own MAE backbone (mmseg layout: the zoo file loads with no key
# conversion; the 'segmentor' loader still resamples tables if the grid differs).
upernet_b_teacher_mmseg = dict(
    upernet_b_segmentor,
    backbone=dict(
        type='MAE',
        img_size=seg_crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=(3, 5, 7, 11),
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        norm_eval=False,
        init_values=1.0,
    ),
)
