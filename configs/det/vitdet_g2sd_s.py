# G2SD ViT-S ViTDet Mask R-CNN on COCO (Huang et al., "Generic-to-Specific Distillation of Masked
# Autoencoders", CVPR 2023, arXiv 2302.14771): the GD ViT-S student fine-tuned with FRS
# specific distillation from the ViTDet-B teacher (detectron2 model_final_61ccd1.pkl): masked
# MSE on the adapted P2-P6 maps (0.001) + masked BCE on RPN objectness (0.1), mask = max over
# anchors of sigmoid(teacher objectness), warm-up 500 iterations. Official G2SD_det_dis recipe:
# LSJ 1024, batch 64, 184,375 iterations, AdamW 1e-4 wd 0.05, layer decay 0.7, drop path 0.1.
_base_ = [
    '../_base_/models/vitdet_mask_rcnn.py',
    '../_base_/datasets/coco_instance_lsj.py',
    '../_base_/schedules/det_lsj_100e.py',
]
model = dict(
    _delete_=True,
    type='g2sd.DistillModel',
    student={{_base_.vitdet_s_gd}},
    teacher={{_base_.vitdet_b_teacher}},
    teacher_checkpoint={{_base_.vitdet_b_teacher_checkpoint}},
    teacher_use='detector',
    teacher_forward='g2sd.det.rpn_teacher_forward',
    distill=[
        dict(
            name='frs_feat',
            student='neck',
            teacher='neck',
            adapter=dict(
                type='g2sd.MultiLevelConvAdapter',
                in_channels=256,
                out_channels=256,
                num_levels=5,
                kernel_size=3,
            ),
            loss=dict(type='g2sd.MaskedFeatureMSELoss', loss_weight=0.001),
            extra=dict(mask_logits=dict(source='teacher', module='rpn_head', index=0)),
        ),
        dict(
            name='frs_cls',
            student='rpn_head',
            student_index=0,
            teacher='rpn_head',
            teacher_index=0,
            loss=dict(type='g2sd.MaskedBCELoss', loss_weight=0.1),
        ),
    ],
)
# FRS weights warmed up linearly over 500 iterations: w = min(1, t / 500).
custom_hooks = [dict(type='g2sd.DistillWeightHook', warmup=500, by_epoch=False)]
