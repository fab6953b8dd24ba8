# G2SD w/o S.D. (Huang et al., CVPR 2023): the GD ViT-S student fine-tuned as a plain ViTDet
# Mask R-CNN on COCO, the recipe of vitdet_g2sd_s.py without the teacher.
_base_ = [
    '../_base_/models/vitdet_mask_rcnn.py',
    '../_base_/datasets/coco_instance_lsj.py',
    '../_base_/schedules/det_lsj_100e.py',
]
model = {{_base_.vitdet_s_gd}}
