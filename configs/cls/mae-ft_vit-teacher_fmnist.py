# Fine-tune the Fashion-MNIST MAE teacher (96-d, 6 blocks) into the classification teacher of
# the SD runs: MAE fine-tuning (global average pooling + fc_norm, drop path 0.1, layer decay
# 0.65) from the MAE pre-trained checkpoint. Writes work_dir/teacher.pth (plain ViT with
# fc_norm + head), the teacher_checkpoint of configs/cls/*-sd*_fmnist.py.
_base_ = [
    '../_base_/fmnist_runtime.py',
    '../_base_/datasets/fmnist_cls.py',
    '../_base_/schedules/fmnist_cls.py',
    '../_base_/models/fmnist_cls.py',
]
custom_imports = dict(
    imports=['g2sd.engine', 'g2sd.distill', 'g2sd.cls'], allow_failed_imports=False
)
model = dict(
    type='g2sd.ViTClassifier',
    backbone={{_base_.fmnist_cls_teacher_ft}},
    data_preprocessor={{_base_.fmnist_cls_preprocessor}},
    pretrained={{_base_.fmnist_mae_teacher_checkpoint}},
)
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65))
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='teacher.pth')]
