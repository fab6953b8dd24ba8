# G2SD classification specific distillation (official SD.sh): AdamW (0.9, 0.999), wd 0.05
# (none on 1-D params, cls/dist tokens, position embeddings), lr = 1e-3 x batch / 256 = 4e-3 at
# batch 1024, layer decay 0.75, 5 linear warm-up epochs then cosine to 1e-6 (x each group's
# layer-decay scale, as MAE's lr_sched: eta_min_ratio = 1e-6 / 4e-3), 200 epochs, AMP.
# The cosine ends at train_cfg.max_epochs: --cfg-options train_cfg.max_epochs=N alone is right.
max_epochs = 200
warmup_epochs = 5
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='g2sd.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3 * 1024 / 256, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.75),
)
param_scheduler = dict(
    type='g2sd.WarmupCosineLR',
    warmup=warmup_epochs,
    warmup_start_factor=1e-3,
    eta_min_ratio=1e-6 / 4e-3,
    convert_to_iter_based=True,
)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=1024, enable=False)
