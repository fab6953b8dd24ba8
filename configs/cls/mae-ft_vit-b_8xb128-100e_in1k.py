# The classification teacher: MAE ViT-B fine-tuned on ImageNet-1k with MAE's recipe
# (FINETUNE.md: 100 epochs, batch 1024, lr 5e-4 x batch / 256, layer decay 0.65, drop path 0.1,
# wd 0.05, mixup 0.8 / cutmix 1.0 / smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, erasing
# 0.25, 5 warm-up epochs, global average pooling + fc_norm; MAE reports 83.6%). Starts from
# MAE's pre-trained encoder (mae_pretrain_vit_base.pth or our configs/pretrain MAE export).
# Writes work_dir/teacher.pth: the teacher_checkpoint of the configs/cls/g2sd-sd_* runs.
_base_ = [
    '../_base_/cls_runtime.py',
    '../_base_/datasets/imagenet_cls.py',
    '../_base_/schedules/cls_finetune_200e.py',
    '../_base_/models/in1k_cls.py',
]
max_epochs = 100
model = dict(
    type='g2sd.ViTClassifier',
    backbone={{_base_.vit_b_gap}},
    data_preprocessor={{_base_.in1k_preprocessor}},
    pretrained={{_base_.mae_b_pretrain_checkpoint}},
)
optim_wrapper = dict(
    optimizer=dict(lr=5e-4 * 1024 / 256),
    paramwise_cfg=dict(layer_decay_rate=0.65),
)
param_scheduler = dict(eta_min_ratio=1e-6 / 2e-3)
train_cfg = dict(max_epochs=max_epochs)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='teacher.pth')]
