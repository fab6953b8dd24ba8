# Runtime of the classification fine-tuning / specific-distillation runs (ImageNet scale):
# the default runtime plus g2sd.cls, a checkpoint per 10 epochs and the best top-1 kept.
_base_ = ['./default_runtime.py']
custom_imports = dict(
    imports=['g2sd.engine', 'g2sd.distill', 'g2sd.cls'], allow_failed_imports=False
)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(
        type='CheckpointHook', interval=10, max_keep_ckpts=2, save_best='top1', rule='greater'
    ),
)
