# G2SD-S specific distillation with normalized KD (official --enable_nkd, NKD_loss.py):
# NKD(T=1, alpha=1) on the class-token head with the mixup labels replaces both loss terms;
# inference uses the class-token head only (official use_distoken=False). The distillation
# token stays in the sequence (as in the official code) but its head gets no gradient, hence
# find_unused_parameters for DDP.
_base_ = ['./g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py']
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
