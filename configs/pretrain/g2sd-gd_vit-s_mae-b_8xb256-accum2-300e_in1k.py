# G2SD generic distillation, ViT-Small student from an MAE ViT-B teacher (paper Sec. 3.1).
# Effective batch 4096 = 8 GPUs x 256 x accumulative_counts 2; lr = 1.5e-4 x 4096 / 256.
# Launch: tools/dist_train.sh configs/pretrain/<this file> 8 --amp
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_pretrain.py',
    '../_base_/schedules/pretrain_adamw_cosine.py',
    '../_base_/models/in1k_vits.py',
]
# The teacher MUST contain the MAE decoder: MAE's mae_pretrain_vit_base_full.pth
# (the encoder-only mae_pretrain_vit_base.pth is refused).
teacher_checkpoint = 'checkpoints/mae_pretrain_vit_base_full.pth'
model = dict(
    type='g2sd.G2SDDistiller',
    student={{_base_.mae_vit_s_gd}},
    teacher={{_base_.mae_vit_b}},
    teacher_checkpoint=teacher_checkpoint,
    mask_ratio=0.75,
    target_block=4,  # k: teacher decoder residual stream after block 4 of 8
    loss_type='smooth_l1',
    beta=2.0,
    token_set='all',  # cls + visible + masked
)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student_vit-s_g2sd-gd.pth'),
]
