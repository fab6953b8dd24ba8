# MAE / G2SD pre-training schedule: AdamW(0.9, 0.95), wd 0.05 without decay on 1-D params,
# lr = 1.5e-4 x 4096 / 256, linear warm-up then half-cosine per iteration.
base_batch_size = 4096
max_epochs = 300
warmup_epochs = 10
min_lr = 2.5e-6
lr = 1.5e-4 * base_batch_size / 256
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    accumulative_counts=2,
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-4,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - warmup_epochs,
        eta_min=min_lr,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=base_batch_size, enable=False)
