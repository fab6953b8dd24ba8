# Runtime shared by every g2sd stage (mmengine Runner).
default_scope = 'g2sd'
custom_imports = dict(imports=['g2sd.engine', 'g2sd.distill'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=20, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
log_processor = dict(window_size=10, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, diff_rank_seed=True)
# Training curves: mmengine's LocalVisBackend writes <work_dir>/<timestamp>/vis_data/scalars.json
# (what the reproduction's figures are drawn from). `tools/train.py --vis tensorboard` (or wandb)
# adds a TensorboardVisBackend / WandbVisBackend (pip install -e .[tensorboard] / .[wandb]).
# _scope_: the visualizer registries are mmengine's (g2sd has none; no scope warning).
visualizer = dict(
    type='Visualizer', _scope_='mmengine', vis_backends=[dict(type='LocalVisBackend')]
)
