# Fashion-MNIST UperNet teacher (CPU): toy UperNet from the 96-d MAE teacher
# (checkpoints/fmnist_mae_vit-teacher.pth) on the ADE-layout canvases of
# tools/dataset/make_fmnist_ade.py. Its weights, shipped as checkpoints/fmnist_upernet-teacher.pth,
# are the CWD teacher of upernet_g2sd_fmnist.py (see configs/seg/README.md for the command).
_base_ = [
    '../_base_/models/upernet_fmnist.py',
    '../_base_/datasets/fmnist_ade.py',
    '../_base_/schedules/seg_fmnist.py',
]
model = {{_base_.fmnist_seg_teacher_mae}}
# The teacher trains twice as long as the students (warm-up 20, poly to 0 at the end).
max_iters = 1600
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=20 + 1),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
