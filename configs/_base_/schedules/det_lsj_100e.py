# ViTDet 100-epoch schedule as run by G2SD_det_dis (run.sh + mask_rcnn_vitdet_b_100ep.py):
# 184,375 iterations at batch 64, lr x[1, 0.1, 0.01] at 163,889 / 177,546, 250-iteration linear
# warm-up from 0.001, AdamW lr 1e-4 betas (0.9, 0.999) wd 0.05 (run.sh), layer decay 0.7,
# evaluation and a checkpoint every 5000 iterations. `--amp` switches to AmpOptimWrapper;
# `--auto-scale-lr` rescales lr for a total batch other than 64. Also the runtime of the det
# configs (default runtime + g2sd.det imports).
_base_ = ['../default_runtime.py']
custom_imports = dict(
    imports=['g2sd.engine', 'g2sd.distill', 'g2sd.det'], allow_failed_imports=False
)
max_iters = 184375
interval = 5000
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.7, weight_decay_rule='detectron2'),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_iters,
        by_epoch=False,
        milestones=[163889, 177546],
        gamma=0.1,
    ),
]
train_cfg = dict(
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=interval,
    dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)],
)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=64, enable=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=interval, save_last=True, max_keep_ckpts=5
    ),
)
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
