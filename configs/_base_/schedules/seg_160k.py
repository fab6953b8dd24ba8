# UperNet 160k schedule as run by G2SD_seg_dis (configs/_base_/schedules/schedule_160k.py +
# the distill configs, reference/g2sd.md section 5.4): 160,000 iterations at batch 16, AdamW
# lr 1e-4 betas (0.9, 0.999) wd 0.05, layer decay 0.65 (lr x 0.65^(13 - id): embeddings 0,
# block k k + 1, neck / heads 13), poly decay power 1.0 to 0 with a 1500-iteration linear
# warm-up from 1e-6, mIoU and a checkpoint every 16,000 iterations. The official mmcv 0.x
# 'poly' + linear warm-up is lr = 1e-4 (1 - t / 160k) (1e-6 + (1 - 1e-6) min(t, 1500) / 1500):
# both schedulers below start at 0 and multiply, and end one step later than the lengths
# because mmengine's LinearLR / PolyLR reach their final value at step `end - 1` (mmseg 1.x's
# port, end=1500 and PolyLR from 1500 to 160k, differs from the official curve by < 1%).
# Weight decay: the constructor's default rule (no decay on 1-D params, biases, pos_embed,
# cls_token, rel-pos tables, layer scales; the official constructor meant this but decays
# pos_embed / cls_token / tables, whose prefixed names never matched). AMP: `tools/train.py --amp` switches to AmpOptimWrapper
# (dynamic loss scale; the official run used apex O1); `--auto-scale-lr` rescales lr for a
# total batch other than 16. Also the runtime of the seg configs (default runtime + imports).
_base_ = ['../default_runtime.py']
custom_imports = dict(
    imports=['g2sd.engine', 'g2sd.distill', 'g2sd.seg'], allow_failed_imports=False
)
max_iters = 160000
interval = 16000
warmup_iters = 1500
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.65),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=16, enable=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=interval, save_last=True, max_keep_ckpts=3
    ),
)
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
