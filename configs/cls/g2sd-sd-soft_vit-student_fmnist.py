# G2SD SD on Fashion-MNIST with soft distillation on the distillation head:
# KL(softmax(t / T) || softmax(s / T)) x T^2, T = 3 (DeiT's soft variant), weight 1/2.
_base_ = ['./g2sd-sd_vit-student_fmnist.py']
model = dict(
    distill=[
        dict(
            name='soft_kd',
            student='backbone.head_dist',
            teacher='head',
            loss=dict(type='g2sd.SoftKDLoss', temperature=3.0, loss_weight=0.5),
        )
    ]
)
