# ImageNet-1k train split for pre-training / generic distillation (MAE augmentation).
data_root = 'data/imagenet/'
img_norm = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
train_pipeline = [
    dict(type='RandomResizedCrop', size=224, scale=(0.2, 1.0), interpolation='bicubic'),
    dict(type='RandomHorizontalFlip'),
    dict(type='ToTensor'),
    dict(type='Normalize', **img_norm),
]
train_dataloader = dict(
    batch_size=256,  # per GPU; 8 GPUs x 256 x accumulative_counts 2 = 4096
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='g2sd.ImageFolder', root=data_root + 'train', pipeline=train_pipeline),
)
