# Short CPU schedule for the Fashion-MNIST mini runs: AdamW(0.9, 0.95), wd 0.05 without decay
# on 1-D params, 1 warm-up epoch then cosine. Change the length with
# --cfg-options train_cfg.max_epochs=N (the cosine follows).
max_epochs = 10
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)
param_scheduler = dict(
    type='g2sd.WarmupCosineLR',
    warmup=1,
    warmup_start_factor=1e-3,
    eta_min=1e-5,
    convert_to_iter_based=True,
)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=128, enable=False)
