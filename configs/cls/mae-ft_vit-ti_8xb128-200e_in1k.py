# MAE-Ti baseline: the MAE-pre-trained ViT-Ti fine-tuned with MAE's fine-tuning recipe (global
# average pooling + fc_norm, drop path 0.1, mixup 0.8 / cutmix 1.0 / smoothing 0.1, RandAugment,
# erasing 0.25, AdamW wd 0.05, layer decay 0.75, lr 1e-3 x batch / 256), over the same 200
# epochs as the G2SD rows.
_base_ = [
    '../_base_/cls_runtime.py',
    '../_base_/datasets/imagenet_cls.py',
    '../_base_/schedules/cls_finetune_200e.py',
    '../_base_/models/in1k_cls.py',
]
model = dict(
    type='g2sd.ViTClassifier',
    backbone={{_base_.vit_ti_gap}},
    data_preprocessor={{_base_.in1k_preprocessor}},
    pretrained={{_base_.mae_ti_checkpoint}},
)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='student.pth')]
