# Toy ViTDet Mask R-CNN for the Fashion-MNIST COCO canvases (64x64 gray, tools/dataset/
# make_fmnist_coco.py): the paper's architecture (configs/_base_/models/vitdet_mask_rcnn.py)
# at CPU size. Patch 4 -> 16x16 tokens, window 4 with global blocks, relative position, abs pos
# embed resampled from the 28-px pre-training grid (7x7 + class slot). SimpleFPN scales
# (2, 1, 0.5, 0.25) -> strides 2/4/8/16 + max-pool P6 (32), 64 channels, LayerNorm; anchors
# 8..128 px for the 10-36 px items; RoI heads 4conv (64) + fc 256 and an FCN mask head (64);
# fewer proposals / RoI samples and RoIAlign sampling_ratio 2 (CPU cost: NMS, RoIAlign backward).
# Backbones: the 96-d / 6-block MAE teacher and the 48-d / 4-block student of
# configs/_base_/models/fmnist_vits.py (in_chans 1: images are read as grayscale).
norm_cfg = dict(type='g2sd.LN2d', eps=1e-6)  # detectron2's LayerNorm eps (mmcv's default is 1e-5)
fmnist_det_size = (64, 64)
fmnist_det_channels = 64
fmnist_det_backbone_teacher = dict(
    type='g2sd.ViTDetBackbone',
    img_size=64,
    patch_size=4,
    in_chans=1,
    embed_dim=96,
    depth=6,
    num_heads=3,
    mlp_ratio=4.0,
    qkv_bias=True,
    drop_path_rate=0.1,
    norm_eps=1e-6,
    window_size=4,
    global_attn_indexes=(2, 5),
    use_rel_pos=True,
    pretrain_img_size=28,
    pretrain_use_cls_token=True,
    pretrained=None,
    pretrained_use='backbone',
)
fmnist_det_backbone_student = dict(
    fmnist_det_backbone_teacher, embed_dim=48, depth=4, num_heads=3, global_attn_indexes=(1, 3)
)
fmnist_det_preprocessor = dict(
    type='mmdet.DetDataPreprocessor',
    mean=[72.93],  # Fashion-MNIST 0.2860 x 255 (the MAE pre-training normalisation)
    std=[90.02],  # 0.3530 x 255
    bgr_to_rgb=False,
    pad_mask=True,
    pad_size_divisor=32,
    batch_augments=[dict(type='mmdet.BatchFixedSizePad', size=fmnist_det_size, pad_mask=True)],
)
fmnist_det_neck = dict(
    type='g2sd.SimpleFPN',
    backbone_channel=96,
    out_channels=fmnist_det_channels,
    scale_factors=(2.0, 1.0, 0.5, 0.25),
    num_outs=5,
    norm_cfg=norm_cfg,
)
fmnist_det_rpn_head = dict(
    type='mmdet.RPNHead',
    in_channels=fmnist_det_channels,
    feat_channels=fmnist_det_channels,
    num_convs=2,
    anchor_generator=dict(
        type='mmdet.AnchorGenerator', scales=[4], ratios=[0.5, 1.0, 2.0], strides=[2, 4, 8, 16, 32]
    ),
    bbox_coder=dict(
        type='mmdet.DeltaXYWHBBoxCoder',
        target_means=[0.0, 0.0, 0.0, 0.0],
        target_stds=[1.0, 1.0, 1.0, 1.0],
    ),
    loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
    loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
)
fmnist_det_roi_head = dict(
    type='mmdet.StandardRoIHead',
    bbox_roi_extractor=dict(
        type='mmdet.SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
        out_channels=fmnist_det_channels,
        featmap_strides=[2, 4, 8, 16],
        finest_scale=16,
    ),
    bbox_head=dict(
        type='mmdet.Shared4Conv1FCBBoxHead',
        in_channels=fmnist_det_channels,
        conv_out_channels=fmnist_det_channels,
        fc_out_channels=256,
        roi_feat_size=7,
        num_classes=10,
        norm_cfg=norm_cfg,
        bbox_coder=dict(
            type='mmdet.DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[0.1, 0.1, 0.2, 0.2],
        ),
        reg_class_agnostic=False,
        loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
    ),
    mask_roi_extractor=dict(
        type='mmdet.SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2),
        out_channels=fmnist_det_channels,
        featmap_strides=[2, 4, 8, 16],
        finest_scale=16,
    ),
    mask_head=dict(
        type='mmdet.FCNMaskHead',
        num_convs=4,
        in_channels=fmnist_det_channels,
        conv_out_channels=fmnist_det_channels,
        num_classes=10,
        norm_cfg=norm_cfg,
        loss_mask=dict(type='mmdet.CrossEntropyLoss', use_mask=True, loss_weight=1.0),
    ),
)
fmnist_det_train_cfg = dict(
    rpn=dict(
        assigner=dict(
            type='mmdet.MaxIoUAssigner',
            pos_iou_thr=0.7,
            neg_iou_thr=0.3,
            min_pos_iou=0.3,
            match_low_quality=True,
            ignore_iof_thr=-1,
        ),
        sampler=dict(
            type='mmdet.RandomSampler',
            num=256,
            pos_fraction=0.5,
            neg_pos_ub=-1,
            add_gt_as_proposals=False,
        ),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    rpn_proposal=dict(
        nms_pre=300, max_per_img=100, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0
    ),
    rcnn=dict(
        assigner=dict(
            type='mmdet.MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.5,
            min_pos_iou=0.5,
            match_low_quality=True,
            ignore_iof_thr=-1,
        ),
        sampler=dict(
            type='mmdet.RandomSampler',
            num=64,
            pos_fraction=0.25,
            neg_pos_ub=-1,
            add_gt_as_proposals=True,
        ),
        mask_size=28,
        pos_weight=-1,
        debug=False,
    ),
)
fmnist_det_test_cfg = dict(
    rpn=dict(nms_pre=300, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
    rcnn=dict(
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=20,
        mask_thr_binary=0.5,
    ),
)
fmnist_det_teacher = dict(
    type='mmdet.MaskRCNN',
    # mmdet builds its inner defaults (e.g. type='Linear') unprefixed: build them in scope mmdet
    _scope_='mmdet',
    data_preprocessor=fmnist_det_preprocessor,
    backbone=fmnist_det_backbone_teacher,
    neck=fmnist_det_neck,
    rpn_head=fmnist_det_rpn_head,
    roi_head=fmnist_det_roi_head,
    train_cfg=fmnist_det_train_cfg,
    test_cfg=fmnist_det_test_cfg,
)
fmnist_det_student = dict(
    fmnist_det_teacher,
    backbone=fmnist_det_backbone_student,
    neck=dict(fmnist_det_neck, backbone_channel=48),
)
# Checkpoints. The students come from the pre-training stage (tools/train.py work dirs; the
# demo passes its own with --cfg-options model[.student].backbone.pretrained=PATH).
fmnist_mae_teacher_checkpoint = 'checkpoints/fmnist_mae_vit-teacher.pth'
fmnist_gd_student_checkpoint = 'work_dirs/g2sd-gd_vit-student_fmnist/student.pth'
fmnist_mae_student_checkpoint = 'work_dirs/mae_vit-student_fmnist/student.pth'
# shipped, made by configs/det/vitdet_teacher_fmnist.py (see configs/det/README.md)
fmnist_det_teacher_checkpoint = 'checkpoints/fmnist_vitdet-teacher.pth'
model = fmnist_det_teacher


def _init(detector, path):
    return dict(detector, backbone=dict(detector['backbone'], pretrained=path))


fmnist_det_teacher_mae = _init(fmnist_det_teacher, fmnist_mae_teacher_checkpoint)
fmnist_det_student_gd = _init(fmnist_det_student, fmnist_gd_student_checkpoint)
fmnist_det_student_mae = _init(fmnist_det_student, fmnist_mae_student_checkpoint)
# The frozen FRS teacher, loaded whole by DistillModel (teacher_checkpoint).
fmnist_det_teacher_frozen = dict(
    fmnist_det_teacher, backbone=dict(fmnist_det_backbone_teacher, drop_path_rate=0.0)
)
