# The G2SD detection teacher's own config: ViTDet-B Mask R-CNN 100 ep on COCO from MAE ViT-B
# (Li et al., ECCV 2022; detectron2 mask_rcnn_vitdet_b_100ep.py, 51.6 box / 45.9 mask AP; its
# weights are model_final_61ccd1.pkl). Here with G2SD_det_dis's run.sh values (wd 0.05).
_base_ = [
    '../_base_/models/vitdet_mask_rcnn.py',
    '../_base_/datasets/coco_instance_lsj.py',
    '../_base_/schedules/det_lsj_100e.py',
]
model = {{_base_.vitdet_b_mae}}
