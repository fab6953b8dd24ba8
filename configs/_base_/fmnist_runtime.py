# Runtime for the CPU-scale Fashion-MNIST runs: the default runtime, checkpoints every
# epoch, frequent logging, gloo for multi-process CPU runs.
_base_ = ['./default_runtime.py']
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
