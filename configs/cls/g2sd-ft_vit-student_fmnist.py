# "G2SD w/o S.D." on Fashion-MNIST: the generic-distillation student fine-tuned without a
# teacher (class token, the same recipe and schedule as the SD run).
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
    backbone={{_base_.fmnist_cls_student}},
    data_preprocessor={{_base_.fmnist_cls_preprocessor}},
    pretrained={{_base_.fmnist_gd_student_checkpoint}},
)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='student.pth')]
