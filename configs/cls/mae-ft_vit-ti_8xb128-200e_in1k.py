# MAE-Ti baseline: the MAE-S fine-tuning recipe (global average pooling + fc_norm, drop path
# 0.1, MAE augmentation, layer decay 0.75, 200 epochs) with the MAE-pre-trained ViT-Ti.
_base_ = ['./mae-ft_vit-s_8xb128-200e_in1k.py']
model = dict(
    backbone=dict(embed_dim=192, num_heads=3),
    pretrained={{_base_.mae_ti_checkpoint}},
)
