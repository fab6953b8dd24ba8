# MAE ViT-B pre-training (He et al., CVPR 2022): the G2SD teacher recipe. Norm-pix loss,
# mask 0.75, decoder 512-d x 8 blocks; 40 warm-up epochs, cosine to 0, 1600 epochs.
# The exported checkpoint keeps the decoder, as generic distillation needs it.
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_pretrain.py',
    '../_base_/schedules/pretrain_adamw_cosine.py',
    '../_base_/models/in1k_vits.py',
]
max_epochs = 1600
warmup_epochs = 40
model = dict(
    type='g2sd.MAEPretrainer',
    student={{_base_.mae_vit_b_pix}},
    mask_ratio=0.75,
)
param_scheduler = dict(warmup=warmup_epochs, eta_min=0.0)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
custom_hooks = [dict(type='g2sd.SaveStudentHook', out='mae_vit-b_full.pth')]
