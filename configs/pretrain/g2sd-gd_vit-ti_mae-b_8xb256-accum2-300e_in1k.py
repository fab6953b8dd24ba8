# G2SD generic distillation, ViT-Tiny student (192-d, 12 blocks, 3 heads; decoder 128-d,
# 4 blocks, 4 heads) from an MAE ViT-B teacher. Everything else as the ViT-S run.
_base_ = ['./g2sd-gd_vit-s_mae-b_8xb256-accum2-300e_in1k.py']
model = dict(student=dict(embed_dim=192, num_heads=3, decoder_embed_dim=128, decoder_num_heads=4))
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student_vit-ti_g2sd-gd.pth'),
]
