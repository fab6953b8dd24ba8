# G2SD-Ti: specific distillation for ImageNet-1k classification (Huang et al., CVPR 2023):
# the G2SD-S recipe (distillation token at the end, hard KD from the fine-tuned MAE ViT-B,
# batch 1024, layer decay 0.75, 200 epochs) with the generic-distillation ViT-Ti student
# (192-d, 12 blocks, 3 heads). Paper: 77.0 top-1.
#   python tools/train.py configs/cls/g2sd-sd_vit-ti_mae-b_8xb128-200e_in1k.py --amp
_base_ = ['./g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py']
model = dict(
    student=dict(
        backbone=dict(embed_dim=192, num_heads=3),
        pretrained='work_dirs/g2sd-gd_vit-ti_mae-b_8xb256-accum2-300e_in1k/student_vit-ti_g2sd-gd.pth',
    )
)
