# CPU schedule of the Fashion-MNIST segmentation runs: the shape of the UperNet 160k recipe
# (configs/_base_/schedules/seg_160k.py: AdamW (0.9, 0.999), wd 0.05, layer decay 0.65,
# linear warm-up from 1e-6 over ~1% of the run (1500 / 160k -> 10 / 800), poly power 1.0 to 0
# from iteration 0; `end` = length + 1 as there) over max_iters iterations at batch 8 with a
# higher lr (1e-3). Val (slide inference, mIoU) and a checkpoint at the end. Change the length
# with --cfg-options train_cfg.max_iters=N train_cfg.val_interval=N param_scheduler.1.end=N+1.
_base_ = ['../fmnist_runtime.py']
custom_imports = dict(
    imports=['g2sd.engine', 'g2sd.distill', 'g2sd.seg'], allow_failed_imports=False
)
max_iters = 800
warmup_iters = 10
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.65),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=8, enable=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=max_iters, save_last=True, max_keep_ckpts=2
    ),
)
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
