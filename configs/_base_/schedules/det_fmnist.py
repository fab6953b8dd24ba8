# CPU schedule of the Fashion-MNIST detection runs: the ViTDet recipe's shape (AdamW (0.9,
# 0.999), wd 0.05, layer decay 0.7, linear warm-up from 0.001, lr x0.1 at ~89% and ~96% of
# the run, as 163,889 / 177,546 of 184,375) over max_iters iterations at batch 8 with a higher
# lr. Change the length with --cfg-options train_cfg.max_iters=N param_scheduler.1.milestones=[..].
_base_ = ['../fmnist_runtime.py']
custom_imports = dict(
    imports=['g2sd.engine', 'g2sd.distill', 'g2sd.det'], allow_failed_imports=False
)
max_iters = 200
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.7, weight_decay_rule='detectron2'),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=25),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_iters,
        by_epoch=False,
        milestones=[178, 193],
        gamma=0.1,
    ),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=8, enable=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=max_iters, save_last=True, max_keep_ckpts=2
    ),
)
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
