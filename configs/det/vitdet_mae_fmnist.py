# MAE baseline on the Fashion-MNIST canvases (CPU): the 48-d MAE student fine-tuned as a toy
# ViTDet Mask R-CNN. Student init: model.backbone.pretrained.
_base_ = [
    '../_base_/models/vitdet_fmnist.py',
    '../_base_/datasets/fmnist_coco.py',
    '../_base_/schedules/det_fmnist.py',
]
model = {{_base_.fmnist_det_student_mae}}
