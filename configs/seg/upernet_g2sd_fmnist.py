# G2SD on the Fashion-MNIST canvases (CPU): the 48-d GD student fine-tuned with CWD from the
# shipped toy UperNet teacher, exactly the formulation of upernet_g2sd_s.py (CWD tau 1, weight 3
# on the decode heads' 11-class logits; the teacher runs backbone + neck + decode head).
# Student init: model.student.backbone.pretrained.
_base_ = [
    '../_base_/models/upernet_fmnist.py',
    '../_base_/datasets/fmnist_ade.py',
    '../_base_/schedules/seg_fmnist.py',
]
model = dict(
    _delete_=True,
    type='g2sd.DistillModel',
    student={{_base_.fmnist_seg_student_gd}},
    teacher={{_base_.fmnist_seg_teacher_frozen}},
    teacher_checkpoint={{_base_.fmnist_seg_teacher_checkpoint}},
    teacher_use='segmentor',
    teacher_forward='g2sd.seg.decode_teacher_forward',
    distill=[
        dict(
            name='cwd',
            student='decode_head.conv_seg',
            teacher='decode_head.conv_seg',
            loss=dict(type='g2sd.ChannelWiseDivergence', tau=1.0, loss_weight=3.0),
        )
    ],
)
