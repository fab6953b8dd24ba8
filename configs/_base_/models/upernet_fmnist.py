# Toy UperNet for the Fashion-MNIST ADE-layout canvases (64x64 gray, tools/dataset/
# make_fmnist_ade.py): the paper's architecture (configs/_base_/models/upernet_vit.py) at CPU
# size. Backbones at img_size 48 (the training crop; also the bias-table grid), patch 4 ->
# 12x12 tokens, abs pos embed resampled from the 28-px pre-training grid (7x7 + class slot),
# zero-init relative position bias, layer scale 1.0, drop path 0.1; Feature2Pyramid x4 / x2 /
# x1 / x0.5 (48, 24, 12, 6 px maps), UPerHead channels = embed dim, pool scales (1, 2, 3, 6),
# auxiliary FCNHead on level 2 (32 channels, weight 0.4); BN (one process) instead of SyncBN;
# 11 classes (background is evaluated). Backbones: the 96-d / 6-block MAE teacher (blocks
# 1, 2, 3, 5) and the 48-d / 4-block students (blocks 0-3) of configs/_base_/models/fmnist_vits.py
# (in_chans 1: images are read as grayscale).
norm_cfg = dict(type='BN', requires_grad=True)
num_classes = 11
fmnist_seg_crop = (48, 48)
fmnist_seg_backbone_teacher = dict(
    type='g2sd.SegViTBackbone',
    img_size=48,
    patch_size=4,
    in_chans=1,
    embed_dim=96,
    depth=6,
    num_heads=3,
    mlp_ratio=4.0,
    out_indices=(1, 2, 3, 5),
    use_rel_pos_bias=True,
    init_values=1.0,
    drop_path_rate=0.1,
    pretrained=None,
    pretrained_use='backbone',
)
fmnist_seg_backbone_student = dict(
    fmnist_seg_backbone_teacher, embed_dim=48, depth=4, num_heads=3, out_indices=(0, 1, 2, 3)
)
fmnist_seg_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[72.93],  # Fashion-MNIST 0.2860 x 255 (the MAE pre-training normalisation)
    std=[90.02],  # 0.3530 x 255
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size=fmnist_seg_crop,
)
fmnist_seg_teacher = dict(
    type='EncoderDecoder',
    # mmseg builds its inner parts unprefixed (ConvModule norms, losses): build in scope mmseg
    _scope_='mmseg',
    data_preprocessor=fmnist_seg_preprocessor,
    backbone=fmnist_seg_backbone_teacher,
    neck=dict(type='Feature2Pyramid', embed_dim=96, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[96, 96, 96, 96],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=96,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=96,
        in_index=2,
        channels=32,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    # slide inference as in the paper (crop 48 stride 32 on the 64x64 canvases: 2x2 windows)
    test_cfg=dict(mode='slide', crop_size=fmnist_seg_crop, stride=(32, 32)),
)
fmnist_seg_student = dict(
    fmnist_seg_teacher,
    backbone=fmnist_seg_backbone_student,
    neck=dict(fmnist_seg_teacher['neck'], embed_dim=48),
    decode_head=dict(fmnist_seg_teacher['decode_head'], in_channels=[48] * 4, channels=48),
    auxiliary_head=dict(fmnist_seg_teacher['auxiliary_head'], in_channels=48),
)
# Checkpoints. The students come from the pre-training stage (tools/train.py work dirs; the
# demo passes its own with --cfg-options model[.student].backbone.pretrained=PATH).
fmnist_mae_teacher_checkpoint = 'checkpoints/fmnist_mae_vit-teacher.pth'
fmnist_gd_student_checkpoint = 'work_dirs/g2sd-gd_vit-student_fmnist/student.pth'
fmnist_mae_student_checkpoint = 'work_dirs/mae_vit-student_fmnist/student.pth'
# shipped, made by configs/seg/upernet_teacher_fmnist.py (see configs/seg/README.md)
fmnist_seg_teacher_checkpoint = 'checkpoints/fmnist_upernet-teacher.pth'
model = fmnist_seg_teacher


def _init(segmentor, path):
    return dict(segmentor, backbone=dict(segmentor['backbone'], pretrained=path))


fmnist_seg_teacher_mae = _init(fmnist_seg_teacher, fmnist_mae_teacher_checkpoint)
fmnist_seg_student_gd = _init(fmnist_seg_student, fmnist_gd_student_checkpoint)
fmnist_seg_student_mae = _init(fmnist_seg_student, fmnist_mae_student_checkpoint)
# The frozen CWD teacher, loaded whole by DistillModel (teacher_checkpoint).
fmnist_seg_teacher_frozen = dict(
    fmnist_seg_teacher, backbone=dict(fmnist_seg_backbone_teacher, drop_path_rate=0.0)
)
