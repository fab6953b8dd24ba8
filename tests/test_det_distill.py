"""FRS detection distillation (G2SD det SD): losses, adapters, teacher forward, wrapper step.

The expected values are the formula of ``G2SD_det_dis/tools/plain_distill_net.py`` written
out again here, per level, on fixed tensors: m_l = max over anchors of sigmoid(teacher
objectness), detached; feat = sum m (F_t - A(F_s))^2 / sum m; cls = sum m BCE / sum m.
The detector is a tiny ViTDet Mask R-CNN (preamble interface 4: g2sd.ViTDetBackbone embed 32 /
depth 2, g2sd.SimpleFPN 16 channels with LN2d, LN2d RoI heads) on two 64 px images.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.logging import MessageHub

import g2sd.det  # noqa: F401  (registers the detection parts)
import g2sd.distill  # noqa: F401
from g2sd.det.distill import rpn_teacher_forward
from g2sd.distill.base import resolve_teacher_forward
from g2sd.distill.losses import MaskedBCELoss, MaskedFeatureMSELoss
from g2sd.distill.specific import DistillModel, MultiLevelConvAdapter
from g2sd.engine.hooks import DistillWeightHook

C = 16  # FPN channels


def _tiny_maskrcnn_cfg() -> ConfigDict:
    return ConfigDict(
        type='mmdet.MaskRCNN',
        data_preprocessor=dict(
            type='mmdet.DetDataPreprocessor',
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_mask=True,
            pad_size_divisor=32,
        ),
        backbone=dict(
            type='g2sd.ViTDetBackbone',
            img_size=64,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=2,
            global_attn_indexes=(1,),
            use_rel_pos=True,
            pretrain_img_size=64,
            pretrain_use_cls_token=True,
            drop_path_rate=0.0,
        ),
        neck=dict(
            type='g2sd.SimpleFPN',
            backbone_channel=32,
            out_channels=C,
            scale_factors=(4.0, 2.0, 1.0, 0.5),
            num_outs=5,
            norm_cfg=dict(type='g2sd.LN2d'),
        ),
        rpn_head=dict(
            type='mmdet.RPNHead',
            in_channels=C,
            feat_channels=C,
            num_convs=2,
            anchor_generator=dict(
                type='mmdet.AnchorGenerator',
                scales=[4],
                ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64],
            ),
            bbox_coder=dict(
                type='mmdet.DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4
            ),
            loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
        ),
        roi_head=dict(
            type='mmdet.StandardRoIHead',
            bbox_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
                out_channels=C,
                featmap_strides=[4, 8, 16, 32],
            ),
            bbox_head=dict(
                type='mmdet.Shared4Conv1FCBBoxHead',
                in_channels=C,
                conv_out_channels=C,
                fc_out_channels=32,
                roi_feat_size=7,
                num_classes=3,
                norm_cfg=dict(type='g2sd.LN2d'),
                bbox_coder=dict(
                    type='mmdet.DeltaXYWHBBoxCoder',
                    target_means=[0.0] * 4,
                    target_stds=[0.1, 0.1, 0.2, 0.2],
                ),
                loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
            ),
            mask_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2),
                out_channels=C,
                featmap_strides=[4, 8, 16, 32],
            ),
            mask_head=dict(
                type='mmdet.FCNMaskHead',
                num_convs=2,
                in_channels=C,
                conv_out_channels=C,
                num_classes=3,
                norm_cfg=dict(type='g2sd.LN2d'),
                loss_mask=dict(type='mmdet.CrossEntropyLoss', use_mask=True, loss_weight=1.0),
            ),
        ),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(
                    type='mmdet.MaxIoUAssigner',
                    pos_iou_thr=0.7,
                    neg_iou_thr=0.3,
                    min_pos_iou=0.3,
                    match_low_quality=True,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(
                    type='mmdet.RandomSampler',
                    num=64,
                    pos_fraction=0.5,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=False,
                ),
                allowed_border=-1,
                pos_weight=-1,
                debug=False,
            ),
            rpn_proposal=dict(
                nms_pre=200,
                max_per_img=50,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(
                assigner=dict(
                    type='mmdet.MaxIoUAssigner',
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=True,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(
                    type='mmdet.RandomSampler',
                    num=32,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True,
                ),
                mask_size=28,
                pos_weight=-1,
                debug=False,
            ),
        ),
        test_cfg=dict(
            rpn=dict(
                nms_pre=200,
                max_per_img=50,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(
                score_thr=0.05,
                nms=dict(type='nms', iou_threshold=0.5),
                max_per_img=10,
                mask_thr_binary=0.5,
            ),
        ),
    )


FRS_DISTILL = [
    dict(
        name='frs_feat',
        student='neck',
        teacher='neck',
        adapter=dict(
            type='g2sd.MultiLevelConvAdapter',
            in_channels=C,
            out_channels=C,
            num_levels=5,
            kernel_size=3,
        ),
        loss=dict(type='g2sd.MaskedFeatureMSELoss', loss_weight=0.001),
        extra=dict(mask_logits=dict(source='teacher', module='rpn_head', index=0)),
    ),
    dict(
        name='frs_cls',
        student='rpn_head',
        student_index=0,
        teacher='rpn_head',
        teacher_index=0,
        loss=dict(type='g2sd.MaskedBCELoss', loss_weight=0.1),
    ),
]


def _build() -> DistillModel:
    return DistillModel(
        student=_tiny_maskrcnn_cfg(),
        teacher=_tiny_maskrcnn_cfg(),
        allow_random_teacher=True,
        teacher_forward='g2sd.det.rpn_teacher_forward',
        distill=FRS_DISTILL,
    )


def _batch() -> dict:
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(1)
    inputs, samples = [], []
    for i in range(2):
        masks = np.zeros((2, 64, 64), np.uint8)
        masks[0, 8:30, 10:40] = 1
        masks[1, 36:60, 30 - 4 * i : 50] = 1
        sample = DetDataSample(
            metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64))
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10.0, 8.0, 40.0, 30.0], [30.0 - 4 * i, 36.0, 50.0, 60.0]]),
            labels=torch.tensor([1, 2]),
            masks=BitmapMasks(masks, 64, 64),
        )
        inputs.append(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


# ------------------------------------------------------ formula written out again
def _ref_mask(t_logits: torch.Tensor) -> torch.Tensor:
    return torch.max(torch.sigmoid(t_logits.detach()), dim=1).values  # (N, H, W)


def _ref_feat(fs: list, ft: list, t_logits: list) -> torch.Tensor:
    total = torch.zeros(())
    for s, t, o in zip(fs, ft, t_logits):
        m = _ref_mask(o)
        total = total + ((t - s) ** 2 * m[:, None]).sum() / m.sum()
    return total


def _ref_bce(s_logits: list, t_logits: list) -> torch.Tensor:
    total = torch.zeros(())
    for s, t in zip(s_logits, t_logits):
        m = _ref_mask(t)
        p, q = torch.sigmoid(s), torch.sigmoid(t)
        # F.binary_cross_entropy's definition (the official term): logs clamped at -100
        log_p, log_1p = torch.log(p).clamp(min=-100), torch.log(1 - p).clamp(min=-100)
        bce = -(q * log_p + (1 - q) * log_1p)
        total = total + (bce * m[:, None]).sum() / m.sum()
    return total


def _levels(shapes: list, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * 2 for s in shapes]


FEAT_SHAPES = [(2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)]
LOGIT_SHAPES = [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]


def test_masked_feature_mse_per_level_matches_formula() -> None:
    fs, ft, to = _levels(FEAT_SHAPES, 1), _levels(FEAT_SHAPES, 2), _levels(LOGIT_SHAPES, 3)
    got = MaskedFeatureMSELoss(loss_weight=0.001)(fs, ft, mask_logits=to)
    torch.testing.assert_close(got, 0.001 * _ref_feat(fs, ft, to))
    # tuples work too, and a hand-computed 1-level value: m = 0.5 everywhere -> sum d^2 / (N*H*W)
    one = MaskedFeatureMSELoss()((torch.ones(1, 2, 1, 2),), (torch.zeros(1, 2, 1, 2),),
                                 mask_logits=(torch.zeros(1, 3, 1, 2),))  # fmt: skip
    torch.testing.assert_close(one, torch.tensor(2.0))  # 4 * 0.5 / (2 * 0.5): not / C


def test_masked_bce_per_level_matches_formula() -> None:
    so, to = _levels(LOGIT_SHAPES, 4), _levels(LOGIT_SHAPES, 5)
    got = MaskedBCELoss(loss_weight=0.1)(so, to)
    torch.testing.assert_close(got, 0.1 * _ref_bce(so, to))


def test_mask_is_detached_and_student_gets_gradient() -> None:
    fs = [x.requires_grad_() for x in _levels(FEAT_SHAPES, 1)]
    ft = _levels(FEAT_SHAPES, 2)
    to = [x.requires_grad_() for x in _levels(LOGIT_SHAPES, 3)]
    so = [x.requires_grad_() for x in _levels(LOGIT_SHAPES, 4)]
    (MaskedFeatureMSELoss()(fs, ft, mask_logits=to) + MaskedBCELoss()(so, to)).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in fs + so)
    assert all(x.grad is None for x in to)


def test_level_lists_must_match() -> None:
    fs, ft, to = _levels(FEAT_SHAPES, 1), _levels(FEAT_SHAPES, 2), _levels(LOGIT_SHAPES, 3)
    with pytest.raises(ValueError, match='levels'):
        MaskedFeatureMSELoss()(fs, ft[:2], mask_logits=to)
    with pytest.raises(TypeError, match='per level'):
        MaskedBCELoss()(_levels(LOGIT_SHAPES, 4), to[0])


def test_multi_level_adapter() -> None:
    ad = MultiLevelConvAdapter(4, 6, num_levels=3)
    assert sorted(ad.state_dict()) == sorted(
        f'convs.{i}.{k}' for i in range(3) for k in ('weight', 'bias')
    )
    xs = _levels(FEAT_SHAPES, 7)
    out = ad(xs)
    for i, (x, y) in enumerate(zip(xs, out)):
        conv = ad.convs[i]
        torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, padding=1))
        assert y.shape == (2, 6, *x.shape[-2:])
    with pytest.raises(ValueError, match='3 levels'):
        ad(xs[:2])
    with pytest.raises(ValueError, match='num_levels'):
        MultiLevelConvAdapter(4, 4, num_levels=0)


def test_warmup_factor_from_hook() -> None:
    """g2sd.DistillWeightHook(warmup=500, by_epoch=False): w = min(1, t / 500)."""
    hook = DistillWeightHook(warmup=500, by_epoch=False)
    model = types.SimpleNamespace(distill_weight_scale=None)
    hub = MessageHub.get_instance('test_det_distill_warmup')
    for t, expected in ((0, 0.0), (250, 0.5), (500, 1.0), (1000, 1.0)):
        runner = types.SimpleNamespace(model=model, iter=t, epoch=0, message_hub=hub)
        hook.before_train_iter(runner, batch_idx=t)
        assert model.distill_weight_scale == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- the wrapper
@pytest.fixture(scope='module')
def model() -> DistillModel:
    torch.manual_seed(0)
    return _build()


def test_config_string_resolves() -> None:
    assert resolve_teacher_forward('g2sd.det.rpn_teacher_forward') is rpn_teacher_forward


def test_teacher_outside_tree(model: DistillModel) -> None:
    sd = model.state_dict()
    assert sd and not any(k.startswith('teacher') or '._teacher' in k for k in sd)
    assert any(k.startswith('adapters.frs_feat.convs.4.') for k in sd)
    params = {id(p) for p in model.parameters()}
    assert not any(id(p) in params for p in model.teacher.parameters())
    assert all(id(p) in params for p in model.adapters.parameters())
    model.train()
    assert model.student.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_optimizer_holds_adapters_not_teacher(model: DistillModel) -> None:
    from mmengine.optim import build_optim_wrapper

    ow = build_optim_wrapper(model, dict(optimizer=dict(type='SGD', lr=0.01)))
    in_opt = {id(p) for g in ow.optimizer.param_groups for p in g['params']}
    assert all(id(p) in in_opt for p in model.adapters.parameters())
    assert not any(id(p) in in_opt for p in model.teacher.parameters())


def test_teacher_runs_only_backbone_neck_rpn(
    model: DistillModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError('the teacher must not run this')

    teacher = model.teacher
    monkeypatch.setattr(teacher.roi_head, 'forward', boom)
    monkeypatch.setattr(teacher.roi_head, 'loss', boom)
    monkeypatch.setattr(teacher.rpn_head, 'loss', boom)
    monkeypatch.setattr(teacher.rpn_head, 'loss_and_predict', boom)
    monkeypatch.setattr(teacher.rpn_head, 'predict', boom)
    monkeypatch.setattr(teacher, 'loss', boom)
    monkeypatch.setattr(teacher, 'predict', boom)
    data = model.data_preprocessor(_batch(), True)
    feats, (cls, box) = model.run_teacher(data['inputs'], data['data_samples'])
    assert len(feats) == 5 and len(cls) == 5 and len(box) == 5
    assert cls[0].shape == (2, 3, 16, 16) and not cls[0].requires_grad


def test_loss_step_values_and_gradients(model: DistillModel) -> None:
    """One DistillModel.loss: student losses + FRS terms equal to the formula; backward."""
    model.train()
    model.distill_weight_scale = 0.5  # as DistillWeightHook sets it at t = 250
    data = model.data_preprocessor(_batch(), True)
    inputs, samples = data['inputs'], data['data_samples']
    student_calls = {'neck': 0, 'rpn_head': 0}
    for name in student_calls:
        mod = getattr(model.student, name)
        orig = type(mod).forward

        def counting(self, *a, _orig=orig, _name=name, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            student_calls[_name] += 1
            return _orig(self, *a, **k)

        mod.forward = types.MethodType(counting, mod)
    try:
        losses = model.loss(inputs, samples)
    finally:
        for name in student_calls:
            del getattr(model.student, name).forward
    assert student_calls == {'neck': 1, 'rpn_head': 1}  # recorded once, not recomputed
    for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
        assert key in losses
    assert {'distill.loss_frs_feat', 'distill.loss_frs_cls'} <= set(losses)

    # independent recomputation on the same inputs (no dropout / drop path: a second pass
    # gives the same maps)
    with torch.no_grad():
        ft = model.teacher.extract_feat(inputs)
        to = model.teacher.rpn_head(ft)[0]
        fs = model.student.extract_feat(inputs)
        so = model.student.rpn_head(fs)[0]
        convs = model.adapters['frs_feat'].convs
        fa = [F.conv2d(f, c.weight, c.bias, padding=1) for f, c in zip(fs, convs)]
        feat_ref = 0.5 * 0.001 * _ref_feat(fa, list(ft), list(to))
        cls_ref = 0.5 * 0.1 * _ref_bce(list(so), list(to))
    torch.testing.assert_close(losses['distill.loss_frs_feat'].detach(), feat_ref)
    torch.testing.assert_close(losses['distill.loss_frs_cls'].detach(), cls_ref)

    total, _ = model.parse_losses(losses)
    model.zero_grad(set_to_none=True)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []  # DDP without find_unused_parameters
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.adapters['frs_feat'].convs[0].weight.grad.abs().sum() > 0


def test_teacher_runs_in_the_callers_autocast(model: DistillModel) -> None:
    """The wrapper adds no autocast of its own: the optimizer wrapper's context applies."""
    data = model.data_preprocessor(_batch(), True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, (cls, _) = model.run_teacher(data['inputs'])
    assert cls[0].dtype == torch.bfloat16  # the RPN convs ran in bf16
    _, (cls, _) = model.run_teacher(data['inputs'])
    assert cls[0].dtype == torch.float32
