# G2SD-S: specific distillation for ImageNet-1k classification (Huang et al., CVPR 2023;
# official SD.sh). The generic-distillation ViT-S student gets a DeiT-style distillation token
# (appended at the end without position embedding, as the official code) and head; the frozen
# MAE ViT-B teacher (fine-tuned, 83.6%) sees the same mixup / cutmix batch;
# loss = 1/2 [soft-target CE(cls head, mixup targets) + CE(dist head, argmax teacher)];
# inference averages both heads. Batch 8 x 128 = 1024, lr 1e-3 x 1024 / 256, layer decay 0.75,
# wd 0.05, drop path 0, 5 warm-up + 195 cosine epochs, AMP.
# Paper: 82.5 top-1 (98.7% of the teacher).
#   python tools/train.py configs/cls/g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py --amp
#   (other batch sizes: --auto-scale-lr)
_base_ = [
    '../_base_/cls_runtime.py',
    '../_base_/datasets/imagenet_cls.py',
    '../_base_/schedules/cls_finetune_200e.py',
    '../_base_/models/in1k_cls.py',
]
model = dict(
    type='g2sd.DistillModel',
    student=dict(
        type='g2sd.ViTClassifier',
        backbone={{_base_.vit_s_dist}},
        data_preprocessor={{_base_.in1k_preprocessor}},
        pretrained={{_base_.gd_s_checkpoint}},
    ),
    teacher={{_base_.teacher_b}},
    teacher_checkpoint={{_base_.teacher_checkpoint}},
    teacher_use='encoder_teacher',
    student_loss_weight=0.5,
    distill=[
        dict(
            name='hard_kd',
            student='backbone.head_dist',
            teacher='head',
            loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5),
        )
    ],
)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook', require_teacher=True),
    dict(type='g2sd.TeacherValHook'),  # logs teacher/top1 once before training
    dict(type='g2sd.SaveStudentHook', out='student.pth'),
]
