# The Fashion-MNIST MAE teacher (96-d, 6 blocks; decoder 64-d x 4). Exports the whole MAE
# (with decoder) as work_dir/fmnist_mae_vit-teacher.pth; the copy shipped under checkpoints/
# was made with: python tools/train.py configs/pretrain/mae_vit-teacher_fmnist.py
_base_ = [
    '../_base_/fmnist_runtime.py',
    '../_base_/datasets/fmnist_pretrain.py',
    '../_base_/schedules/fmnist_pretrain.py',
    '../_base_/models/fmnist_vits.py',
]
model = dict(type='g2sd.MAEPretrainer', student={{_base_.fmnist_teacher}}, mask_ratio=0.75)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='fmnist_mae_vit-teacher.pth')]
