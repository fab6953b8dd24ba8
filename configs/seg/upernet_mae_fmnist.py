# MAE baseline on the Fashion-MNIST canvases (CPU): the 48-d MAE student fine-tuned as a toy
# UperNet. Student init: model.backbone.pretrained.
_base_ = [
    '../_base_/models/upernet_fmnist.py',
    '../_base_/datasets/fmnist_ade.py',
    '../_base_/schedules/seg_fmnist.py',
]
model = {{_base_.fmnist_seg_student_mae}}
