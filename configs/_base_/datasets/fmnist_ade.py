# Fashion-MNIST ADE-layout canvases (tools/dataset/make_fmnist_ade.py --out data/fmnist_ade):
# 64x64 gray, 1-4 items, 11 classes (background = 0 is evaluated: reduce_zero_label=False).
# Read as grayscale (the toy backbones have in_chans 1). Train: the ADE20K pipeline at toy
# scale (resize (128, 64) x ratio 0.5-2.0 keeping the ratio, RandomCrop 48 with cat_max_ratio
# 0.75, flip 0.5, pad 48 by SegDataPreProcessor) without PhotoMetricDistortion (it converts
# BGR <-> HSV and needs 3-channel images; these are 1-channel gray). Test: resize (128, 64)
# keeping the ratio (64x64 stays 64x64), slide inference in the model file.
dataset_type = 'g2sd.FashionMNISTSegDataset'
data_root = 'data/fmnist_ade/'
crop_size = (48, 48)
train_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='LoadAnnotations'),  # reduce_zero_label from the dataset (False)
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),  # reduce_zero_label from the dataset (False)
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        _scope_='mmseg',  # mmseg / mmcv transforms build inner ones unprefixed
        data_root=data_root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        _scope_='mmseg',  # mmseg / mmcv transforms build inner ones unprefixed
        data_root=data_root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
