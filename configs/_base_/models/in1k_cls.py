# Classification models of the ImageNet-1k runs (224 px, patch 16, 1000 classes).
# Students: ViT-Ti (192-d, 12 blocks, 3 heads) and ViT-S (384-d, 12 blocks, 6 heads), class
# token, drop path 0 (official SD.sh). Teacher: MAE ViT-B (768-d, 12 blocks, 12 heads), global
# average pooling + fc_norm, fine-tuned to 83.6% (MAE's mae_finetuned_vit_base.pth or
# configs/cls/mae-ft_vit-b_8xb128-100e_in1k.py).
vit_ti = dict(
    type='g2sd.VisionTransformer',
    img_size=224,
    patch_size=16,
    embed_dim=192,
    depth=12,
    num_heads=3,
    num_classes=1000,
    global_pool='token',
    drop_path_rate=0.0,
)
vit_s = dict(vit_ti, embed_dim=384, num_heads=6)
vit_b = dict(vit_ti, embed_dim=768, num_heads=12)
# SD students: DeiT-style distillation token at the end without position embedding (official).
vit_ti_dist = dict(vit_ti, type='g2sd.DistilledVisionTransformer', dist_token_position='end')
vit_s_dist = dict(vit_s, type='g2sd.DistilledVisionTransformer', dist_token_position='end')
# MAE fine-tuning heads: global average pooling + fc_norm.
vit_ti_gap = dict(vit_ti, global_pool='avg', drop_path_rate=0.1)
vit_s_gap = dict(vit_s, global_pool='avg', drop_path_rate=0.1)
vit_b_gap = dict(vit_b, global_pool='avg', drop_path_rate=0.1)
teacher_b = dict(vit_b, global_pool='avg')  # frozen: no drop path
# Batch augmentation: mixup 0.8, cutmix 1.0 (switch 0.5, always on), label smoothing 0.1.
in1k_preprocessor = dict(
    type='g2sd.ClsDataPreprocessor',
    num_classes=1000,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    prob=1.0,
    switch_prob=0.5,
    mode='batch',
    label_smoothing=0.1,
)
# Inputs: generic-distillation / MAE students (SaveStudentHook exports of configs/pretrain/*)
# and the fine-tuned teacher.
gd_ti_checkpoint = (
    'work_dirs/g2sd-gd_vit-ti_mae-b_8xb256-accum2-300e_in1k/student_vit-ti_g2sd-gd.pth'
)
gd_s_checkpoint = 'work_dirs/g2sd-gd_vit-s_mae-b_8xb256-accum2-300e_in1k/student_vit-s_g2sd-gd.pth'
mae_ti_checkpoint = 'work_dirs/mae_vit-ti_8xb256-accum2-300e_in1k/mae_vit-ti.pth'
mae_s_checkpoint = 'work_dirs/mae_vit-s_8xb256-accum2-300e_in1k/mae_vit-s.pth'
mae_b_pretrain_checkpoint = 'checkpoints/mae_pretrain_vit_base.pth'
teacher_checkpoint = 'checkpoints/mae_finetuned_vit_base.pth'
