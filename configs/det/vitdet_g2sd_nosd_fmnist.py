# G2SD w/o S.D. on the Fashion-MNIST canvases (CPU): the 48-d GD student fine-tuned without the
# teacher. Student init: model.backbone.pretrained.
_base_ = [
    '../_base_/models/vitdet_fmnist.py',
    '../_base_/datasets/fmnist_coco.py',
    '../_base_/schedules/det_fmnist.py',
]
model = {{_base_.fmnist_det_student_gd}}
