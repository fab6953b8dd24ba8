# G2SD w/o S.D. (Huang et al., CVPR 2023): the GD ViT-S student fine-tuned as a plain UperNet
# on ADE20K, the recipe of upernet_g2sd_s.py without the teacher.
_base_ = [
    '../_base_/models/upernet_vit.py',
    '../_base_/datasets/ade20k_512.py',
    '../_base_/schedules/seg_160k.py',
]
model = {{_base_.upernet_s_gd}}
