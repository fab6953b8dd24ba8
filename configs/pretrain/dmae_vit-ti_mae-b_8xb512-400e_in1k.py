# D-MAE (Wang et al., ICML 2023, MAE-Lite): MAE-Tiny (192-d, 12 blocks, 12 heads; decoder
# 96-d, 1 block, 3 heads) with its pixel loss + MSE on the last block's pre-softmax attention
# logits vs an MAE ViT-B encoder on the same visible tokens (1x1 head-mapping conv, weight 1).
# MAE-Lite recipe: batch 4096, lr 2.4e-3, 40 warm-up epochs, cosine to 0, 400 epochs,
# RandomResizedCrop scale (0.08, 1).
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_pretrain.py',
    '../_base_/schedules/pretrain_adamw_cosine.py',
    '../_base_/models/in1k_vits.py',
]
max_epochs = 400
warmup_epochs = 40
teacher_checkpoint = 'checkpoints/mae_pretrain_vit_base.pth'  # encoder-only file suffices
model = dict(
    type='g2sd.DMAEDistiller',
    student=dict(
        type='g2sd.MaskedAutoencoderViT',
        img_size=224,
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=12,
        decoder_embed_dim=96,
        decoder_depth=1,
        decoder_num_heads=3,
        norm_pix_loss=True,
    ),
    teacher={{_base_.vit_b_encoder}},
    teacher_checkpoint=teacher_checkpoint,
    mask_ratio=0.75,
    attn_weight=1.0,
    student_block=-1,
    teacher_block=-1,
    head_adapter=True,
    d2=False,
)
train_dataloader = dict(
    batch_size=512,
    dataset=dict(
        pipeline=[
            dict(type='RandomResizedCrop', size=224, scale=(0.08, 1.0), interpolation='bicubic'),
            dict(type='RandomHorizontalFlip'),
            dict(type='ToTensor'),
            dict(type='Normalize', mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    ),
)
optim_wrapper = dict(accumulative_counts=1)
param_scheduler = dict(warmup=warmup_epochs, eta_min=0.0)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook'),
    dict(type='g2sd.SaveStudentHook', out='student_vit-ti_dmae.pth'),
]
