# G2SD-S specific distillation with soft KD on the distillation head instead of DeiT's hard
# labels: KL(softmax(t / T) || softmax(s / T)) x T^2 with T = 3, weight 1/2 (recipe otherwise
# as configs/cls/g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py).
_base_ = ['./g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py']
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
