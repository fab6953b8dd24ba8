# Fashion-MNIST (Debian's dataset-fashion-mnist, real 28x28 images) for CPU-scale runs.
img_norm = dict(mean=[0.2860], std=[0.3530])
train_pipeline = [
    dict(type='RandomResizedCrop', size=28, scale=(0.5, 1.0), interpolation='bicubic'),
    dict(type='RandomHorizontalFlip'),
    dict(type='ToTensor'),
    dict(type='Normalize', **img_norm),
]
train_dataloader = dict(
    batch_size=128,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='g2sd.FashionMNIST', split='train', num_samples=None, pipeline=train_pipeline
    ),
)
