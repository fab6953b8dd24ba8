# Tiny ViTs for 28x28 gray Fashion-MNIST (patch 4 -> 7x7 = 49 tokens).
# Teacher: 96-d, 6 blocks, 3 heads; MAE decoder 64-d, 4 blocks, 4 heads.
# Student: 48-d, 4 blocks, 3 heads; light decoder 32-d, 2 blocks, 2 heads.
fmnist_teacher = dict(
    type='g2sd.MaskedAutoencoderViT',
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=96,
    depth=6,
    num_heads=3,
    decoder_embed_dim=64,
    decoder_depth=4,
    decoder_num_heads=4,
)
fmnist_student = dict(
    type='g2sd.MaskedAutoencoderViT',
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=48,
    depth=4,
    num_heads=3,
    decoder_embed_dim=32,
    decoder_depth=2,
    decoder_num_heads=2,
)
fmnist_teacher_checkpoint = 'checkpoints/fmnist_mae_vit-teacher.pth'
# The G2SD student has no pixel head (its loss never trains one).
fmnist_student_gd = dict(fmnist_student, pixel_head=False)
