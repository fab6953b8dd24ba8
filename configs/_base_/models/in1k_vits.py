# The paper-scale ViTs of the pre-training configs (224 px, patch 16 -> 14x14 = 196 tokens).
# MAE ViT-B: encoder 768-d, 12 blocks, 12 heads; MAE decoder 512-d, 8 blocks, 16 heads
# (the G2SD teacher, and the MAE teacher recipe). ViT-S student: 384-d, 12 blocks, 6 heads
# with the light G2SD decoder 256-d, 4 blocks, 8 heads. The encoder-only ViT-B is the
# D-MAE / TinyMIM teacher.
mae_vit_b = dict(
    type='g2sd.MaskedAutoencoderViT',
    img_size=224,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
)
mae_vit_s = dict(
    type='g2sd.MaskedAutoencoderViT',
    img_size=224,
    patch_size=16,
    embed_dim=384,
    depth=12,
    num_heads=6,
    decoder_embed_dim=256,
    decoder_depth=4,
    decoder_num_heads=8,
)
vit_b_encoder = dict(
    type='g2sd.VisionTransformer',
    img_size=224,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    num_classes=0,
)
# The G2SD student has no pixel head (its loss never trains one); MAE runs use norm-pix.
mae_vit_s_gd = dict(mae_vit_s, pixel_head=False)
mae_vit_s_pix = dict(mae_vit_s, norm_pix_loss=True)
mae_vit_b_pix = dict(mae_vit_b, norm_pix_loss=True)
