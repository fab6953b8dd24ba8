# MAE ViT-S baseline: UperNet on ADE20K from an MAE-pretrained ViT-S (no distillation), the
# recipe of upernet_g2sd_s.py without the teacher (G2SD paper's MAE-student rows).
_base_ = [
    '../_base_/models/upernet_vit.py',
    '../_base_/datasets/ade20k_512.py',
    '../_base_/schedules/seg_160k.py',
]
model = {{_base_.upernet_s_mae}}
