# MAE ViT-S baseline ("MAE student" rows): same student and decoder as G2SD ViT-S, but the
# pixel loss (norm-pix, mask 0.75) instead of distillation; the G2SD GD schedule (300 epochs).
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_pretrain.py',
    '../_base_/schedules/pretrain_adamw_cosine.py',
    '../_base_/models/in1k_vits.py',
]
model = dict(
    type='g2sd.MAEPretrainer',
    student={{_base_.mae_vit_s_pix}},
    mask_ratio=0.75,
)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='mae_vit-s.pth')]
