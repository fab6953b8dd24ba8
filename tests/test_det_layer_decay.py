"""Layer decay + weight decay of the ViTDet detector in the FRS wrapper (G2SD det SD).

detectron2's ``get_vit_lr_decay_rate`` (rate 0.7, 12 blocks): ``backbone.net.pos_embed`` /
``patch_embed`` -> 0.7^13, ``blocks.k`` -> 0.7^(12-k), everything else (simple FPN, RPN,
RoI heads; the FRS adapters) -> 1. Its weight decay (``weight_decay_norm=0``, ``pos_embed``
override 0, biases decayed) is ``weight_decay_rule='detectron2'``. The official
G2SD_det_dis wraps the student in DDP before building the optimizer, so every name starts
with ``module.`` and the ``startswith('backbone')`` test of detectron2 never matches: all
scales silently become 1. Here the groups are the same with and without DDP.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import ConfigDict
from torch import nn

import g2sd.det  # noqa: F401  (ViTDetBackbone, SimpleFPN, LN2d)
import g2sd.distill  # noqa: F401
import g2sd.engine  # noqa: F401
from g2sd.distill.specific import DistillModel
from g2sd.engine.optim import LayerDecayOptimWrapperConstructor

R = 0.7
WD = 0.05
LR = 1e-4


def _det_cfg() -> ConfigDict:
    ln = dict(type='g2sd.LN2d')
    return ConfigDict(
        type='mmdet.MaskRCNN',
        data_preprocessor=dict(type='mmdet.DetDataPreprocessor', pad_size_divisor=32),
        backbone=dict(
            type='g2sd.ViTDetBackbone',
            img_size=64,
            patch_size=16,
            embed_dim=32,
            depth=12,
            num_heads=2,
            window_size=2,
            global_attn_indexes=(2, 5, 8, 11),
            use_rel_pos=True,
            pretrain_img_size=64,
            pretrain_use_cls_token=True,
        ),
        neck=dict(
            type='g2sd.SimpleFPN',
            backbone_channel=32,
            out_channels=16,
            scale_factors=(4.0, 2.0, 1.0, 0.5),
            num_outs=5,
            norm_cfg=ln,
        ),
        rpn_head=dict(
            type='mmdet.RPNHead',
            in_channels=16,
            feat_channels=16,
            num_convs=2,
            anchor_generator=dict(
                type='mmdet.AnchorGenerator', scales=[8], ratios=[1.0], strides=[4, 8, 16, 32, 64]
            ),
            bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder'),
        ),
        roi_head=dict(
            type='mmdet.StandardRoIHead',
            bbox_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
                out_channels=16,
                featmap_strides=[4, 8, 16, 32],
            ),
            bbox_head=dict(
                type='mmdet.Shared4Conv1FCBBoxHead',
                in_channels=16,
                conv_out_channels=16,
                fc_out_channels=32,
                num_classes=3,
                norm_cfg=ln,
                bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder'),
            ),
            mask_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2),
                out_channels=16,
                featmap_strides=[4, 8, 16, 32],
            ),
            mask_head=dict(
                type='mmdet.FCNMaskHead',
                num_convs=2,
                in_channels=16,
                conv_out_channels=16,
                num_classes=3,
                norm_cfg=ln,
            ),
        ),
        train_cfg=dict(rpn=None, rpn_proposal=None, rcnn=None),
        test_cfg=dict(rpn=None, rcnn=None),
    )


def _model() -> DistillModel:
    torch.manual_seed(0)
    model = DistillModel(
        student=_det_cfg(),
        teacher=_det_cfg(),
        allow_random_teacher=True,
        teacher_forward='extract_feat',
        distill=[
            dict(
                name='frs_feat',
                student='neck',
                teacher='neck',
                adapter=dict(
                    type='g2sd.MultiLevelConvAdapter', in_channels=16, out_channels=16, num_levels=5
                ),
                loss=dict(type='g2sd.MaskedFeatureMSELoss', loss_weight=0.001),
            )
        ],
    )
    return model


def _groups(model: nn.Module, rule: str | None = None) -> dict[str, tuple[float, float]]:
    paramwise = dict(layer_decay_rate=R)
    if rule is not None:
        paramwise['weight_decay_rule'] = rule
    ctor = LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)), paramwise
    )
    opt = ctor(model).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in opt.param_groups:
        assert g['lr'] == pytest.approx(LR * g['lr_scale'])
        for p in g['params']:
            out[names[id(p)]] = (g['lr_scale'], g['weight_decay'])
    return out


# lr scale by name prefix (detectron2 get_vit_lr_decay_rate, rate 0.7, 12 blocks)
SCALES = {
    'student.backbone.pos_embed': 0.7**13,
    'student.backbone.patch_embed.': 0.7**13,
    **{f'student.backbone.blocks.{k}.': 0.7 ** (12 - k) for k in range(12)},
    'student.neck.': 1.0,
    'student.rpn_head.': 1.0,
    'student.roi_head.': 1.0,
    'adapters.': 1.0,
}

# detectron2 weight decay of representative parameters (name: (rule 'detectron2' wd,
# 'detectron2_all_norms' wd, default wd))
WDS = {
    'student.backbone.pos_embed': (0.0, 0.0, 0.0),
    'student.backbone.patch_embed.proj.weight': (WD, WD, WD),
    'student.backbone.patch_embed.proj.bias': (WD, WD, 0.0),
    'student.backbone.blocks.0.norm1.weight': (0.0, 0.0, 0.0),
    'student.backbone.blocks.0.norm1.bias': (0.0, 0.0, 0.0),
    'student.backbone.blocks.0.attn.qkv.bias': (WD, WD, 0.0),
    'student.backbone.blocks.0.attn.rel_pos_h': (WD, WD, WD),
    'student.backbone.blocks.11.mlp.fc2.bias': (WD, WD, 0.0),
    'student.backbone.blocks.11.norm2.weight': (0.0, 0.0, 0.0),
    # LN2d is detectron2's channel LayerNorm, a plain nn.Module there: decayed by d2
    'student.neck.scale_layers.0.1.weight': (WD, 0.0, 0.0),
    'student.neck.scale_layers.0.0.bias': (WD, WD, 0.0),
    'student.neck.lateral_convs.0.ln.weight': (WD, 0.0, 0.0),
    'student.neck.lateral_convs.0.conv.weight': (WD, WD, WD),
    'student.neck.fpn_convs.3.ln.bias': (WD, 0.0, 0.0),
    'student.rpn_head.rpn_conv.0.conv.bias': (WD, WD, 0.0),
    'student.roi_head.bbox_head.shared_convs.0.ln.weight': (WD, 0.0, 0.0),
    'student.roi_head.bbox_head.shared_fcs.0.bias': (WD, WD, 0.0),
    'student.roi_head.mask_head.convs.0.ln.bias': (WD, 0.0, 0.0),
    'student.roi_head.mask_head.conv_logits.weight': (WD, WD, WD),
    'adapters.frs_feat.convs.0.bias': (WD, WD, 0.0),
}


def _expected_scale(name: str) -> float:
    hits = [p for p in SCALES if name.startswith(p)]
    assert len(hits) == 1, (name, hits)
    return SCALES[hits[0]]


@pytest.fixture(scope='module')
def model() -> DistillModel:
    return _model()


def test_lr_scales_literal(model: DistillModel) -> None:
    got = _groups(model, 'detectron2')
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any('teacher' in n for n in got)
    assert got['student.backbone.blocks.11.attn.qkv.weight'][0] == pytest.approx(0.7)
    assert got['student.backbone.blocks.0.attn.qkv.weight'][0] == pytest.approx(0.7**12)
    for name, (scale, _) in got.items():
        assert scale == pytest.approx(_expected_scale(name)), name


@pytest.mark.parametrize('col,rule', [(0, 'detectron2'), (1, 'detectron2_all_norms'), (2, None)])
def test_weight_decay_rules(model: DistillModel, col: int, rule: str | None) -> None:
    got = _groups(model, rule)
    for name, wds in WDS.items():
        assert got[name][1] == wds[col], (name, rule)


def test_unknown_rule_is_refused(model: DistillModel) -> None:
    with pytest.raises(ValueError, match='weight_decay_rule'):
        _groups(model, 'd2')


# ----------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        model = _model()
        plain = _groups(model, 'detectron2')
        names = {id(p): n for n, p in model.named_parameters()}
        wrapped = MMDistributedDataParallel(module=model, find_unused_parameters=False)
        ctor = LayerDecayOptimWrapperConstructor(
            dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
            dict(layer_decay_rate=R, weight_decay_rule='detectron2'),
        )
        opt = ctor(wrapped).optimizer
        by_identity = {
            names[id(p)]: (g['lr_scale'], g['weight_decay'])
            for g in opt.param_groups
            for p in g['params']
        }
        with open(os.path.join(out_dir, f'rank{rank}.pkl'), 'wb') as f:
            pickle.dump((plain, by_identity), f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_groups_identical_under_ddp() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        # fork: the children reuse the imported mmdet / g2sd (spawn would re-import them)
        mp.start_processes(
            _ddp_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True, start_method='fork'
        )
        results = []
        for rank in range(2):
            with open(os.path.join(out_dir, f'rank{rank}.pkl'), 'rb') as f:
                results.append(pickle.load(f))  # noqa: S301 (written by this test)
    for plain, wrapped in results:
        assert wrapped == plain
        assert wrapped['student.backbone.pos_embed'][0] == pytest.approx(0.7**13)
        assert len({s for s, _ in wrapped.values()}) == 14  # 0.7^13 .. 0.7^1 and 1
