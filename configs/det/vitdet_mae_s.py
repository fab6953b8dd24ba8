# MAE ViT-S baseline: ViTDet Mask R-CNN on COCO from an MAE-pretrained ViT-S (no distillation),
# the recipe of vitdet_g2sd_s.py without the teacher (G2SD paper's MAE-student rows).
_base_ = [
    '../_base_/models/vitdet_mask_rcnn.py',
    '../_base_/datasets/coco_instance_lsj.py',
    '../_base_/schedules/det_lsj_100e.py',
]
model = {{_base_.vitdet_s_mae}}
