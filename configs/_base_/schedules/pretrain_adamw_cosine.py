# MAE / G2SD pre-training schedule: AdamW(0.9, 0.95), wd 0.05 without decay on 1-D params,
# lr = 1.5e-4 x 4096 / 256, linear warm-up then half-cosine per iteration. The cosine ends at
# train_cfg.max_epochs: --cfg-options train_cfg.max_epochs=N alone shortens a run.
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
param_scheduler = dict(
    type='g2sd.WarmupCosineLR',
    warmup=warmup_epochs,
    warmup_start_factor=1e-4,
    eta_min=min_lr,
    convert_to_iter_based=True,
)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=base_batch_size, enable=False)
