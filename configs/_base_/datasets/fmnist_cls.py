# Fashion-MNIST classification (Debian's dataset-fashion-mnist, real 28x28 images) for the
# CPU-scale fine-tuning / specific-distillation runs: crop + flip + erasing on the images,
# mixup / cutmix / smoothing in the model's data preprocessor (as on ImageNet).
img_norm = dict(mean=[0.2860], std=[0.3530])
train_pipeline = [
    dict(type='RandomResizedCrop', size=28, scale=(0.6, 1.0), interpolation='bicubic'),
    dict(type='RandomHorizontalFlip'),
    dict(type='ToTensor'),
    dict(type='Normalize', **img_norm),
    dict(type='RandomErasing', p=0.25),
]
test_pipeline = [dict(type='ToTensor'), dict(type='Normalize', **img_norm)]
train_dataloader = dict(
    batch_size=128,
    num_workers=0,
    drop_last=True,  # timm Mixup needs an even batch
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='g2sd.FashionMNIST', split='train', num_samples=None, pipeline=train_pipeline
    ),
)
val_dataloader = dict(
    batch_size=500,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='g2sd.FashionMNIST', split='test', num_samples=None, pipeline=test_pipeline),
)
val_evaluator = dict(type='g2sd.TopKAccuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
