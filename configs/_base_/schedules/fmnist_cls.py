# Short CPU schedule of the Fashion-MNIST classification runs: the ImageNet recipe's shape
# (AdamW 0.9/0.999, wd 0.05, layer decay 0.75, linear warm-up then cosine) over 10 epochs.
# Change the length with --cfg-options train_cfg.max_epochs=N param_scheduler.1.T_max=N-1
# param_scheduler.1.end=N
max_epochs = 10
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.75),
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - 1,
        eta_min_ratio=1e-3,
        by_epoch=True,
        begin=1,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=128, enable=False)
