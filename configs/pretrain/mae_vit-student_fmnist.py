# MAE baseline for the Fashion-MNIST student (48-d, 4 blocks; decoder 32-d x 2).
_base_ = [
    '../_base_/fmnist_runtime.py',
    '../_base_/datasets/fmnist_pretrain.py',
    '../_base_/schedules/fmnist_pretrain.py',
    '../_base_/models/fmnist_vits.py',
]
model = dict(type='g2sd.MAEPretrainer', student={{_base_.fmnist_student}}, mask_ratio=0.75)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='student.pth')]
