# TinyMIM (Ren et al., CVPR 2023): Q-K and V-V relation distillation (KL, softmax at
# head_dim^-0.5) of the student's last block vs the MAE ViT-B teacher's block 12, no masking.
# The student's last block uses the teacher's 12 heads; drop path 0.1 constant; the student
# view adds ColorJitter(0.4). Batch 4096, lr 2.4e-3, 15 warm-up epochs, cosine to 0, 300 epochs.
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_pretrain.py',
    '../_base_/schedules/pretrain_adamw_cosine.py',
    '../_base_/models/in1k_vits.py',
]
warmup_epochs = 15
max_epochs = 300
img_norm = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
teacher_checkpoint = 'checkpoints/mae_pretrain_vit_base.pth'
model = dict(
    type='g2sd.TinyMIMDistiller',
    student=dict(
        type='g2sd.VisionTransformer',
        img_size=224,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        last_block_heads=12,
        num_classes=0,
        drop_path_rate=0.1,
        drop_path_mode='constant',
    ),
    teacher={{_base_.vit_b_encoder}},
    teacher_checkpoint=teacher_checkpoint,
    teacher_block=12,
    relations=('qk', 'vv'),
)
train_dataloader = dict(
    batch_size=128,
    dataset=dict(
        pipeline=[
            dict(
                type='g2sd.TwoViews',
                common=[
                    dict(
                        type='RandomResizedCrop',
                        size=224,
                        scale=(0.2, 1.0),
                        interpolation='bicubic',
                    ),
                    dict(type='RandomHorizontalFlip'),
                ],
                teacher=[dict(type='ToTensor'), dict(type='Normalize', **img_norm)],
                student=[
                    dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4),
                    dict(type='ToTensor'),
                    dict(type='Normalize', **img_norm),
                ],
            )
        ]
    ),
)
optim_wrapper = dict(accumulative_counts=1)
param_scheduler = dict(warmup=warmup_epochs, eta_min=0.0)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student_vit-s_tinymim.pth'),
]
