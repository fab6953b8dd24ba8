# G2SD generic distillation on Fashion-MNIST: the 48-d student regresses the MAE teacher's
# decoder tokens after block 2 of 4 (LayerNorm without affine), Smooth-L1 beta 2, all tokens.
_base_ = [
    '../_base_/fmnist_runtime.py',
    '../_base_/datasets/fmnist_pretrain.py',
    '../_base_/schedules/fmnist_pretrain.py',
    '../_base_/models/fmnist_vits.py',
]
model = dict(
    type='g2sd.G2SDDistiller',
    student={{_base_.fmnist_student_gd}},
    teacher={{_base_.fmnist_teacher}},
    teacher_checkpoint={{_base_.fmnist_teacher_checkpoint}},
    mask_ratio=0.75,
    target_block=2,
    loss_type='smooth_l1',
    beta=2.0,
    token_set='all',
)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student.pth'),
]
