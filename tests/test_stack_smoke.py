"""Stack smoke test: the OpenMMLab stack works on CPU (compiled mmcv ops, one mmdet and one
mmseg train step). It tests the installed libraries, not g2sd code.

These build the *packaged* configs of mmdet 3.3 / mmseg 1.2 (only weights-download and
SyncBN settings are overridden) and run one full ``train_step`` each (data_preprocessor, loss,
backward, optimizer step) on small synthetic batches. In CI (``CI`` set) a missing library is a
failure, not a skip: the project venv must provide them.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import pytest
import torch

IN_CI = bool(os.environ.get('CI'))


def _require(module: str):
    """Import ``module``; outside CI a missing OpenMMLab library skips instead of failing."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f'{module} is not installed (run `make setup`)')


def _packaged_config(package: str, rel: str):
    from mmengine.config import Config

    pkg = _require(package)
    path = Path(pkg.__file__).parent / '.mim' / 'configs' / rel
    assert path.is_file(), f'packaged config missing: {path}'
    return Config.fromfile(str(path))


def _sgd_wrapper(model: torch.nn.Module):
    from mmengine.optim import OptimWrapper

    # Plain SGD (no momentum / weight decay): a parameter can only move if it got a gradient.
    params = [p for p in model.parameters() if p.requires_grad]
    return OptimWrapper(torch.optim.SGD(params, lr=0.01))


def _snapshot(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def _num(value) -> float:
    return float(torch.as_tensor(value).detach())


def _assert_step(model, before: dict[str, torch.Tensor], log_vars: dict, expected: set[str]):
    assert expected <= set(log_vars), f'missing losses: {expected - set(log_vars)}'
    for key, value in log_vars.items():
        value = _num(value)
        assert math.isfinite(value), f'{key} = {value}'
    assert _num(log_vars['loss']) > 0
    params = dict(model.named_parameters())
    for name, old in before.items():
        assert not torch.equal(params[name].detach(), old), f'{name} did not change'


def _box_mask(h: int, w: int, box: list[float]):
    x1, y1, x2, y2 = (int(v) for v in box)
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask.numpy()


def test_mmcv_compiled_ops_on_cpu():
    _require('mmcv')
    importlib.import_module('mmcv._ext')  # the compiled extension (mmcv, not mmcv-lite)
    from mmcv.ops import RoIAlign, batched_nms, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    # Same boxes in different classes are not suppressed.
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2]

    feat = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8).requires_grad_()
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [0, 2.0, 2.0, 8.0, 8.0]])
    roi_align = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    out = roi_align(feat, rois)
    assert out.shape == (2, 2, 2, 2)
    # aligned=True shifts the roi by -0.5 px, so the top-left bin of roi 0 samples pixels
    # (y, x) in {0, 1} x {0, 1} of channel 0, where feat = 8 * y + x: mean(0, 1, 8, 9) = 4.5.
    assert out[0, 0, 0, 0].item() == pytest.approx(4.5, abs=1e-4)
    out.sum().backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mmdet_mask_rcnn_train_step():
    mmdet_utils = _require('mmdet.utils')
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData

    mmdet_utils.register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')
    cfg = _packaged_config('mmdet', 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None  # no ImageNet download
    # Size knobs only (CPU time): ResNet-18 trunk, 128 sampled RoIs per image instead of 512.
    # RoIAlign on CPU is single-threaded and dominates the step at the packaged sizes.
    cfg.model.backbone.depth = 18
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    cfg.model.train_cfg.rcnn.sampler.num = 128
    model = MODELS.build(cfg.model)
    model.train()

    h = w = 256
    boxes = [[[20, 30, 120, 150], [140, 40, 230, 200], [60, 160, 180, 240]], [[10, 10, 200, 120]]]
    data = dict(inputs=[], data_samples=[])
    for img_boxes in boxes:
        data['inputs'].append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        sample = DetDataSample(
            metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
        )
        gt = InstanceData()
        gt.bboxes = torch.tensor(img_boxes, dtype=torch.float32)
        gt.labels = torch.arange(len(img_boxes))
        gt.masks = BitmapMasks([_box_mask(h, w, b) for b in img_boxes], h, w)
        sample.gt_instances = gt
        data['data_samples'].append(sample)

    watched = [
        'neck.lateral_convs.0.conv.weight',
        'rpn_head.rpn_cls.weight',
        'roi_head.bbox_head.fc_cls.weight',
        'roi_head.mask_head.conv_logits.weight',
    ]
    before = _snapshot(model, watched)
    log_vars = model.train_step(data, _sgd_wrapper(model))
    expected = {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask', 'loss'}
    _assert_step(model, before, log_vars, expected)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mmseg_upernet_train_step():
    _require('ftfy')  # mmseg.utils imports it
    mmseg_utils = _require('mmseg.utils')
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    mmseg_utils.register_all_modules(init_default_scope=False)
    init_default_scope('mmseg')
    cfg = _packaged_config('mmseg', 'upernet/upernet_r50_4xb4-80k_ade20k-512x512.py')
    bn = dict(type='BN', requires_grad=True)  # SyncBN needs a process group / GPU
    h = w = 128
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = (h, w)
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        cfg.model[part].norm_cfg = bn
    model = MODELS.build(cfg.model)
    model.train()

    num_classes = cfg.model.decode_head.num_classes
    data = dict(inputs=[], data_samples=[])
    for _ in range(2):
        data['inputs'].append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        seg = torch.randint(0, num_classes, (1, h, w))
        seg[:, :8] = 255  # ignore_index
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=seg)
        data['data_samples'].append(sample)

    watched = [
        'backbone.layer4.2.conv3.weight',
        'decode_head.conv_seg.weight',
        'auxiliary_head.conv_seg.weight',
    ]
    before = _snapshot(model, watched)
    log_vars = model.train_step(data, _sgd_wrapper(model))
    _assert_step(model, before, log_vars, {'decode.loss_ce', 'aux.loss_ce', 'loss'})
    # 150 ADE20K classes at chance: cross-entropy is about log(150) = 5.0, not 0 or huge.
    assert 1.0 < _num(log_vars['decode.loss_ce']) < 20.0
