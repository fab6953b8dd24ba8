# ImageNet-1k classification (MAE / G2SD fine-tuning): timm's create_transform with
# RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel, 1 erase), bicubic; eval
# resize 256 / center crop 224 bicubic. Folders: data/imagenet/{train,val}/<wnid>/*.JPEG.
data_root = 'data/imagenet/'
img_norm = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
train_pipeline = [
    dict(
        type='g2sd.TimmTransform',
        input_size=224,
        is_training=True,
        auto_augment='rand-m9-mstd0.5-inc1',
        re_prob=0.25,
        re_mode='pixel',
        re_count=1,
        interpolation='bicubic',
        color_jitter=None,
        **img_norm,
    )
]
test_pipeline = [
    dict(
        type='g2sd.TimmTransform',
        input_size=224,
        is_training=False,
        interpolation='bicubic',
        crop_pct=224 / 256,
        **img_norm,
    )
]
train_dataloader = dict(
    batch_size=128,  # per GPU; 8 GPUs x 128 = 1024 (auto_scale_lr.base_batch_size)
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,  # timm Mixup needs an even batch
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='g2sd.ImageFolder', root=data_root + 'train', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='g2sd.ImageFolder', root=data_root + 'val', pipeline=test_pipeline),
)
val_evaluator = dict(type='g2sd.TopKAccuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
