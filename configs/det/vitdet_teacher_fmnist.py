# Fashion-MNIST ViTDet teacher (CPU): toy ViTDet Mask R-CNN from the 96-d MAE teacher
# (checkpoints/fmnist_mae_vit-teacher.pth) on the COCO canvases of tools/dataset/make_fmnist_coco.py.
# Its weights, shipped as checkpoints/fmnist_vitdet-teacher.pth, are the FRS teacher of
# vitdet_g2sd_fmnist.py (see configs/det/README.md for the command).
_base_ = [
    '../_base_/models/vitdet_fmnist.py',
    '../_base_/datasets/fmnist_coco.py',
    '../_base_/schedules/det_fmnist.py',
]
model = {{_base_.fmnist_det_teacher_mae}}
# The teacher trains twice as long as the students (400 iterations, lr x0.1 at ~89% / ~96%).
max_iters = 400
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=25),
    dict(
        type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[356, 385], gamma=0.1
    ),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
