# Short CPU schedule of the Fashion-MNIST classification runs: the ImageNet recipe's shape
# (AdamW 0.9/0.999, wd 0.05, layer decay 0.75, linear warm-up then cosine) over 10 epochs.
# Change the length with --cfg-options train_cfg.max_epochs=N (the cosine follows).
max_epochs = 10
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.75),
)
param_scheduler = dict(
    type='g2sd.WarmupCosineLR',
    warmup=1,
    warmup_start_factor=1e-3,
    eta_min_ratio=1e-3,
    convert_to_iter_based=True,
)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=128, enable=False)
