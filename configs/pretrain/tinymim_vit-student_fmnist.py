# TinyMIM on Fashion-MNIST: Q-K / V-V relations of the student's last block (3 heads, the
# teacher's count) vs the teacher's block 6; student view adds ColorJitter(0.4).
_base_ = [
    '../_base_/fmnist_runtime.py',
    '../_base_/datasets/fmnist_pretrain.py',
    '../_base_/schedules/fmnist_pretrain.py',
    '../_base_/models/fmnist_vits.py',
]
img_norm = dict(mean=[0.2860], std=[0.3530])
_vit = dict(type='g2sd.VisionTransformer', img_size=28, patch_size=4, in_chans=1, num_classes=0)
model = dict(
    type='g2sd.TinyMIMDistiller',
    student=dict(
        _vit,
        embed_dim=48,
        depth=4,
        num_heads=3,
        last_block_heads=3,
        drop_path_rate=0.1,
        drop_path_mode='constant',
    ),
    teacher=dict(_vit, embed_dim=96, depth=6, num_heads=3),
    teacher_checkpoint={{_base_.fmnist_teacher_checkpoint}},
    teacher_block=6,
)
train_dataloader = dict(
    dataset=dict(
        pipeline=[
            dict(
                type='g2sd.TwoViews',
                common=[
                    dict(
                        type='RandomResizedCrop', size=28, scale=(0.5, 1.0), interpolation='bicubic'
                    ),
                    dict(type='RandomHorizontalFlip'),
                ],
                teacher=[dict(type='ToTensor'), dict(type='Normalize', **img_norm)],
                student=[
                    dict(type='ColorJitter', brightness=0.4, contrast=0.4),
                    dict(type='ToTensor'),
                    dict(type='Normalize', **img_norm),
                ],
            )
        ]
    )
)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student.pth'),
]
