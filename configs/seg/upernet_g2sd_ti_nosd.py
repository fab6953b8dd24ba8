# G2SD w/o S.D. (Huang et al., CVPR 2023): the GD ViT-Ti student fine-tuned as a plain UperNet
# on ADE20K, the recipe of upernet_g2sd_ti.py without the teacher (41.4 mIoU per the
# authors, G2SD issue #2).
_base_ = [
    '../_base_/models/upernet_vit.py',
    '../_base_/datasets/ade20k_512.py',
    '../_base_/schedules/seg_160k.py',
]
model = {{_base_.upernet_ti_gd}}
