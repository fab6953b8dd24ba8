# D2-MAE (IJCV extension of D-MAE): the decoder is fed after block 8, and a 13th,
# attention-only block on top of block 12 carries the distilled attention logits; only the
# first 12 blocks are exported.
_base_ = ['./dmae_vit-ti_mae-b_8xb512-400e_in1k.py']
model = dict(d2=True, d2_latent_block=8)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student_vit-ti_d2mae.pth'),
]
