# G2SD SD on Fashion-MNIST with normalized KD (the official --enable_nkd): NKD(T=1, alpha=1)
# on the class-token head with the (mixup) labels replaces both loss terms; inference uses
# the class-token head only. The distillation token stays in the sequence (as in the official
# code) but its head gets no gradient, hence find_unused_parameters for DDP.
_base_ = ['./g2sd-sd_vit-student_fmnist.py']
model = dict(
    student=dict(backbone=dict(eval_output='cls')),
    student_loss_weight=0.0,
    distill=[
        dict(
            name='nkd',
            student='backbone.head',
            teacher='head',
            loss=dict(type='g2sd.NKDLoss', temperature=1.0, alpha=1.0, loss_weight=1.0),
        )
    ],
)
find_unused_parameters = True
