# ADE20K (SceneParsing, 150 classes) at 512 crops, the input of G2SD's segmentation stage
# (Huang et al., CVPR 2023; official G2SD_seg_dis configs/_base_/datasets/ade20k.py, mmseg 0.x):
# train resize (2048, 512) x ratio 0.5-2.0 keeping the ratio, RandomCrop 512 (cat_max_ratio
# 0.75), flip 0.5, PhotoMetricDistortion, pad 512 (done by SegDataPreProcessor size=(512, 512)
# in the model file); test single scale (2048, 512). Label 0 ("other") ignored:
# reduce_zero_label=True. Batch 2 per GPU x 8 GPUs = 16 (the authors, G2SD issue #2).
# Data in data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}.
dataset_type = 'mmseg.ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # annotations after the resize: the metric compares at the original size
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        _scope_='mmseg',  # mmseg / mmcv transforms build inner ones unprefixed
        data_root=data_root,
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        _scope_='mmseg',  # mmseg / mmcv transforms build inner ones unprefixed
        data_root=data_root,
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
