# MAE ViT-Ti baseline: the G2SD ViT-Ti student and decoder trained with the pixel loss.
_base_ = ['./mae_vit-s_8xb256-accum2-300e_in1k.py']
model = dict(student=dict(embed_dim=192, num_heads=3, decoder_embed_dim=128, decoder_num_heads=4))
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='mae_vit-ti.pth')]
