# "G2SD-S w/o S.D.": the generic-distillation ViT-S fine-tuned on ImageNet-1k without a
# teacher: class token, soft-target CE with mixup / cutmix / smoothing, and the same
# optimiser, schedule and augmentation as the SD run (so the rows differ only by SD).
_base_ = [
    '../_base_/cls_runtime.py',
    '../_base_/datasets/imagenet_cls.py',
    '../_base_/schedules/cls_finetune_200e.py',
    '../_base_/models/in1k_cls.py',
]
model = dict(
    type='g2sd.ViTClassifier',
    backbone={{_base_.vit_s}},
    data_preprocessor={{_base_.in1k_preprocessor}},
    pretrained={{_base_.gd_s_checkpoint}},
)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='student.pth')]
