# D-MAE on Fashion-MNIST: pixel loss + last-block attention-logit MSE vs the MAE teacher's
# encoder on the same visible tokens (3 -> 3 heads through the 1x1 mapping conv).
_base_ = [
    '../_base_/fmnist_runtime.py',
    '../_base_/datasets/fmnist_pretrain.py',
    '../_base_/schedules/fmnist_pretrain.py',
    '../_base_/models/fmnist_vits.py',
]
model = dict(
    type='g2sd.DMAEDistiller',
    student={{_base_.fmnist_student}},
    teacher=dict(
        type='g2sd.VisionTransformer',
        img_size=28,
        patch_size=4,
        in_chans=1,
        embed_dim=96,
        depth=6,
        num_heads=3,
        num_classes=0,
    ),
    teacher_checkpoint={{_base_.fmnist_teacher_checkpoint}},
    mask_ratio=0.75,
    attn_weight=1.0,
)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student.pth'),
]
