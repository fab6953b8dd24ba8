# ViTDet Mask R-CNN (Li et al., "Exploring Plain Vision Transformer Backbones for Object
# Detection", ECCV 2022) as used by G2SD's detection stage (Huang et al., CVPR 2023,
# arXiv 2302.14771; official code G2SD_det_dis = detectron2 projects/ViTDet):
# plain ViT (window attention 14, global blocks 2/5/8/11, decomposed relative position, abs pos
# embed stored at the 224 pre-training grid with a class slot), SimpleFeaturePyramid P2-P6
# (scales 4, 2, 1, 0.5 + max-pool P6, 256 channels, LayerNorm), RPN with 2 convs, 4conv1fc box
# head and FCN mask head with LayerNorm. This file: ViT-B (the teacher); the S / Ti students
# below. Children set `model.backbone.pretrained` (or `model.student.backbone.pretrained`).
norm_cfg = dict(type='g2sd.LN2d', eps=1e-6)  # detectron2's LayerNorm eps (mmcv's default is 1e-5)
num_classes = 80
vit_b_backbone = dict(
    type='g2sd.ViTDetBackbone',
    img_size=1024,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    drop_path_rate=0.1,
    norm_eps=1e-6,
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
    use_rel_pos=True,
    pretrain_img_size=224,
    pretrain_use_cls_token=True,
    act_checkpoint=False,
    pretrained=None,
    pretrained_use='backbone',
)
# G2SD students: same architecture, drop path 0.1 (official b2s / b2t configs).
vit_s_backbone = dict(vit_b_backbone, embed_dim=384, num_heads=6)
vit_ti_backbone = dict(vit_b_backbone, embed_dim=192, num_heads=3)
det_data_preprocessor = dict(
    type='mmdet.DetDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_mask=True,
    pad_size_divisor=32,
    batch_augments=[dict(type='mmdet.BatchFixedSizePad', size=(1024, 1024), pad_mask=True)],
)
vitdet_neck = dict(
    type='g2sd.SimpleFPN',
    backbone_channel=768,
    out_channels=256,
    scale_factors=(4.0, 2.0, 1.0, 0.5),
    num_outs=5,
    norm_cfg=norm_cfg,
)
vitdet_rpn_head = dict(
    type='mmdet.RPNHead',
    in_channels=256,
    feat_channels=256,
    num_convs=2,
    anchor_generator=dict(
        type='mmdet.AnchorGenerator',
        scales=[8],
        ratios=[0.5, 1.0, 2.0],
        strides=[4, 8, 16, 32, 64],
    ),
    bbox_coder=dict(
        type='mmdet.DeltaXYWHBBoxCoder',
        target_means=[0.0, 0.0, 0.0, 0.0],
        target_stds=[1.0, 1.0, 1.0, 1.0],
    ),
    loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
    loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
)
vitdet_roi_head = dict(
    type='mmdet.StandardRoIHead',
    bbox_roi_extractor=dict(
        type='mmdet.SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
        out_channels=256,
        featmap_strides=[4, 8, 16, 32],
    ),
    bbox_head=dict(
        type='mmdet.Shared4Conv1FCBBoxHead',
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=num_classes,
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
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
        out_channels=256,
        featmap_strides=[4, 8, 16, 32],
    ),
    mask_head=dict(
        type='mmdet.FCNMaskHead',
        num_convs=4,
        in_channels=256,
        conv_out_channels=256,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        loss_mask=dict(type='mmdet.CrossEntropyLoss', use_mask=True, loss_weight=1.0),
    ),
)
vitdet_train_cfg = dict(
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
        nms_pre=2000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0
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
            num=512,
            pos_fraction=0.25,
            neg_pos_ub=-1,
            add_gt_as_proposals=True,
        ),
        mask_size=28,
        pos_weight=-1,
        debug=False,
    ),
)
vitdet_test_cfg = dict(
    rpn=dict(
        nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0
    ),
    rcnn=dict(
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100,
        mask_thr_binary=0.5,
    ),
)
vitdet_b_detector = dict(
    type='mmdet.MaskRCNN',
    # mmdet builds its inner defaults (e.g. type='Linear') unprefixed: build them in scope mmdet
    _scope_='mmdet',
    data_preprocessor=det_data_preprocessor,
    backbone=vit_b_backbone,
    neck=vitdet_neck,
    rpn_head=vitdet_rpn_head,
    roi_head=vitdet_roi_head,
    train_cfg=vitdet_train_cfg,
    test_cfg=vitdet_test_cfg,
)
vitdet_s_detector = dict(
    vitdet_b_detector, backbone=vit_s_backbone, neck=dict(vitdet_neck, backbone_channel=384)
)
vitdet_ti_detector = dict(
    vitdet_b_detector, backbone=vit_ti_backbone, neck=dict(vitdet_neck, backbone_channel=192)
)
model = vitdet_b_detector
# Initialisations (override with --cfg-options model[.student].backbone.pretrained=PATH).
# GD / MAE students: tools/train.py outputs of configs/pretrain (same paths as the cls configs).
gd_s_checkpoint = 'work_dirs/g2sd-gd_vit-s_mae-b_8xb256-accum2-300e_in1k/student_vit-s_g2sd-gd.pth'
gd_ti_checkpoint = (
    'work_dirs/g2sd-gd_vit-ti_mae-b_8xb256-accum2-300e_in1k/student_vit-ti_g2sd-gd.pth'
)
mae_s_checkpoint = 'work_dirs/mae_vit-s_8xb256-accum2-300e_in1k/mae_vit-s.pth'
mae_ti_checkpoint = 'work_dirs/mae_vit-ti_8xb256-accum2-300e_in1k/mae_vit-ti.pth'
mae_b_pretrain_checkpoint = 'checkpoints/mae_pretrain_vit_base.pth'
# The official G2SD detection teacher: detectron2 model zoo ViTDet-B Mask R-CNN 100 ep
# (51.6 box / 45.9 mask AP), read by the 'detector' loader (detectron2 -> mmdet keys).
vitdet_b_teacher_checkpoint = 'checkpoints/vitdet/model_final_61ccd1.pkl'


def _init(detector, path):
    return dict(detector, backbone=dict(detector['backbone'], pretrained=path))


vitdet_s_gd = _init(vitdet_s_detector, gd_s_checkpoint)
vitdet_ti_gd = _init(vitdet_ti_detector, gd_ti_checkpoint)
vitdet_s_mae = _init(vitdet_s_detector, mae_s_checkpoint)
vitdet_ti_mae = _init(vitdet_ti_detector, mae_ti_checkpoint)
vitdet_b_mae = _init(vitdet_b_detector, mae_b_pretrain_checkpoint)
# The teacher is loaded whole by DistillModel (teacher_checkpoint): no backbone init, no drop path.
vitdet_b_teacher = dict(
    vitdet_b_detector, backbone=dict(vit_b_backbone, drop_path_rate=0.0, pretrained=None)
)
