# "G2SD-Ti w/o S.D.": the G2SD-S w/o S.D. recipe (no teacher, same optimiser, schedule and
# augmentation as the SD run) with the generic-distillation ViT-Ti student.
_base_ = ['./g2sd-ft_vit-s_8xb128-200e_in1k.py']
model = dict(
    backbone=dict(embed_dim=192, num_heads=3),
    pretrained={{_base_.gd_ti_checkpoint}},
)
