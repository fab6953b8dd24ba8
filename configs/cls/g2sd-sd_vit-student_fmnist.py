# G2SD on Fashion-MNIST: the generic-distillation student fine-tuned with specific
# distillation from the fine-tuned 96-d teacher, exactly the ImageNet formulation:
# distillation token at the end (no position embedding), loss
# 1/2 [soft-target CE(cls head, mixup targets) + CE(dist head, argmax teacher)], inference
# averages both heads. The KD loss is chosen by config (see *-sd-soft_* / *-sd-nkd_*).
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
    type='g2sd.DistillModel',
    student=dict(
        type='g2sd.ViTClassifier',
        backbone={{_base_.fmnist_cls_student_dist}},
        data_preprocessor={{_base_.fmnist_cls_preprocessor}},
        pretrained={{_base_.fmnist_gd_student_checkpoint}},
    ),
    teacher={{_base_.fmnist_cls_teacher}},
    teacher_checkpoint={{_base_.fmnist_cls_teacher_checkpoint}},
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
