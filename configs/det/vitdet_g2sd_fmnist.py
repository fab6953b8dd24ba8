# G2SD on the Fashion-MNIST canvases (CPU): the 48-d GD student fine-tuned with FRS distillation
# from the shipped toy ViTDet teacher, exactly the formulation of vitdet_g2sd_s.py (adapters on
# the 64-channel P2-P6 maps). Student init: model.student.backbone.pretrained.
_base_ = [
    '../_base_/models/vitdet_fmnist.py',
    '../_base_/datasets/fmnist_coco.py',
    '../_base_/schedules/det_fmnist.py',
]
model = dict(
    _delete_=True,
    type='g2sd.DistillModel',
    student={{_base_.fmnist_det_student_gd}},
    teacher={{_base_.fmnist_det_teacher_frozen}},
    teacher_checkpoint={{_base_.fmnist_det_teacher_checkpoint}},
    teacher_use='detector',
    teacher_forward='g2sd.det.rpn_teacher_forward',
    distill=[
        dict(
            name='frs_feat',
            student='neck',
            teacher='neck',
            adapter=dict(
                type='g2sd.MultiLevelConvAdapter',
                in_channels=64,
                out_channels=64,
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
# FRS weights warmed up linearly: w = min(1, t / 25) (the paper's 500 of 184,375 iterations,
# scaled to this 200-iteration run as the lr warm-up is: 250 -> 25).
custom_hooks = [dict(type='g2sd.DistillWeightHook', warmup=25, by_epoch=False)]
