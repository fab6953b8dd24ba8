# MAE ViT-S baseline ("MAE student" rows): same student and decoder as G2SD ViT-S, but the
# pixel loss (norm-pix, mask 0.75) instead of distillation; the G2SD GD schedule (300 epochs).
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_pretrain.py',
    '../_base_/schedules/pretrain_adamw_cosine.py',
]
model = dict(
    type='g2sd.MAEPretrainer',
    student=dict(
        type='g2sd.MaskedAutoencoderViT',
        img_size=224,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        decoder_embed_dim=256,
        decoder_depth=4,
        decoder_num_heads=8,
        norm_pix_loss=True,
    ),
    mask_ratio=0.75,
)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='mae_vit-s.pth')]
