# TinyMIM ViT-T: 192-d, 12 blocks with 6 heads, the last block with the teacher's 12.
_base_ = ['./tinymim_vit-s_mae-b_32xb128-300e_in1k.py']
model = dict(student=dict(embed_dim=192, num_heads=6, last_block_heads=12))
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student_vit-t_tinymim.pth'),
]
