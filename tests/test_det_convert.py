"""Tests of g2sd.det.convert, the safe detectron2 readers and the detectron2 <-> mmdet tools.

The detectron2 key set below is written out by hand from detectron2's source
(``modeling/backbone/vit.py`` ViT / SimpleFeaturePyramid with scale factors (4, 2, 1, 0.5),
``proposal_generator/rpn.py`` StandardRPNHead with ``conv_dims=[-1, -1]``,
``roi_heads/box_head.py`` FastRCNNConvFCHead with 4 convs + 1 fc and ``conv_norm='LN'``,
``roi_heads/fast_rcnn.py`` FastRCNNOutputLayers, ``roi_heads/mask_head.py``
MaskRCNNConvUpsampleHead with 4 convs), for a tiny model: embed 32, depth 2, heads 2,
patch 16, 64 px input, window 2 (block 0) / global (block 1), 16 neck channels, 3 classes.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from g2sd import checkpoint as ck
from g2sd.checkpoint.reading import load_plain_pickle
from g2sd.det import convert as dc

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / 'tools' / 'convert'

# detectron2 name -> shape, for the tiny model (literal, from detectron2's source).
D2_SHAPES: dict[str, tuple[int, ...]] = {
    'backbone.net.pos_embed': (1, 17, 32),
    'backbone.net.patch_embed.proj.weight': (32, 3, 16, 16),
    'backbone.net.patch_embed.proj.bias': (32,),
    'backbone.net.blocks.0.norm1.weight': (32,),
    'backbone.net.blocks.0.norm1.bias': (32,),
    'backbone.net.blocks.0.attn.rel_pos_h': (3, 16),
    'backbone.net.blocks.0.attn.rel_pos_w': (3, 16),
    'backbone.net.blocks.0.attn.qkv.weight': (96, 32),
    'backbone.net.blocks.0.attn.qkv.bias': (96,),
    'backbone.net.blocks.0.attn.proj.weight': (32, 32),
    'backbone.net.blocks.0.attn.proj.bias': (32,),
    'backbone.net.blocks.0.norm2.weight': (32,),
    'backbone.net.blocks.0.norm2.bias': (32,),
    'backbone.net.blocks.0.mlp.fc1.weight': (128, 32),
    'backbone.net.blocks.0.mlp.fc1.bias': (128,),
    'backbone.net.blocks.0.mlp.fc2.weight': (32, 128),
    'backbone.net.blocks.0.mlp.fc2.bias': (32,),
    'backbone.net.blocks.1.norm1.weight': (32,),
    'backbone.net.blocks.1.norm1.bias': (32,),
    'backbone.net.blocks.1.attn.rel_pos_h': (7, 16),
    'backbone.net.blocks.1.attn.rel_pos_w': (7, 16),
    'backbone.net.blocks.1.attn.qkv.weight': (96, 32),
    'backbone.net.blocks.1.attn.qkv.bias': (96,),
    'backbone.net.blocks.1.attn.proj.weight': (32, 32),
    'backbone.net.blocks.1.attn.proj.bias': (32,),
    'backbone.net.blocks.1.norm2.weight': (32,),
    'backbone.net.blocks.1.norm2.bias': (32,),
    'backbone.net.blocks.1.mlp.fc1.weight': (128, 32),
    'backbone.net.blocks.1.mlp.fc1.bias': (128,),
    'backbone.net.blocks.1.mlp.fc2.weight': (32, 128),
    'backbone.net.blocks.1.mlp.fc2.bias': (32,),
    'backbone.simfp_2.0.weight': (32, 16, 2, 2),
    'backbone.simfp_2.0.bias': (16,),
    'backbone.simfp_2.1.weight': (16,),
    'backbone.simfp_2.1.bias': (16,),
    'backbone.simfp_2.3.weight': (16, 8, 2, 2),
    'backbone.simfp_2.3.bias': (8,),
    'backbone.simfp_2.4.weight': (16, 8, 1, 1),
    'backbone.simfp_2.4.norm.weight': (16,),
    'backbone.simfp_2.4.norm.bias': (16,),
    'backbone.simfp_2.5.weight': (16, 16, 3, 3),
    'backbone.simfp_2.5.norm.weight': (16,),
    'backbone.simfp_2.5.norm.bias': (16,),
    'backbone.simfp_3.0.weight': (32, 16, 2, 2),
    'backbone.simfp_3.0.bias': (16,),
    'backbone.simfp_3.1.weight': (16, 16, 1, 1),
    'backbone.simfp_3.1.norm.weight': (16,),
    'backbone.simfp_3.1.norm.bias': (16,),
    'backbone.simfp_3.2.weight': (16, 16, 3, 3),
    'backbone.simfp_3.2.norm.weight': (16,),
    'backbone.simfp_3.2.norm.bias': (16,),
    'backbone.simfp_4.0.weight': (16, 32, 1, 1),
    'backbone.simfp_4.0.norm.weight': (16,),
    'backbone.simfp_4.0.norm.bias': (16,),
    'backbone.simfp_4.1.weight': (16, 16, 3, 3),
    'backbone.simfp_4.1.norm.weight': (16,),
    'backbone.simfp_4.1.norm.bias': (16,),
    'backbone.simfp_5.1.weight': (16, 32, 1, 1),
    'backbone.simfp_5.1.norm.weight': (16,),
    'backbone.simfp_5.1.norm.bias': (16,),
    'backbone.simfp_5.2.weight': (16, 16, 3, 3),
    'backbone.simfp_5.2.norm.weight': (16,),
    'backbone.simfp_5.2.norm.bias': (16,),
    'proposal_generator.rpn_head.conv.conv0.weight': (16, 16, 3, 3),
    'proposal_generator.rpn_head.conv.conv0.bias': (16,),
    'proposal_generator.rpn_head.conv.conv1.weight': (16, 16, 3, 3),
    'proposal_generator.rpn_head.conv.conv1.bias': (16,),
    'proposal_generator.rpn_head.objectness_logits.weight': (3, 16, 1, 1),
    'proposal_generator.rpn_head.objectness_logits.bias': (3,),
    'proposal_generator.rpn_head.anchor_deltas.weight': (12, 16, 1, 1),
    'proposal_generator.rpn_head.anchor_deltas.bias': (12,),
    'roi_heads.box_head.conv1.weight': (16, 16, 3, 3),
    'roi_heads.box_head.conv1.norm.weight': (16,),
    'roi_heads.box_head.conv1.norm.bias': (16,),
    'roi_heads.box_head.conv2.weight': (16, 16, 3, 3),
    'roi_heads.box_head.conv2.norm.weight': (16,),
    'roi_heads.box_head.conv2.norm.bias': (16,),
    'roi_heads.box_head.conv3.weight': (16, 16, 3, 3),
    'roi_heads.box_head.conv3.norm.weight': (16,),
    'roi_heads.box_head.conv3.norm.bias': (16,),
    'roi_heads.box_head.conv4.weight': (16, 16, 3, 3),
    'roi_heads.box_head.conv4.norm.weight': (16,),
    'roi_heads.box_head.conv4.norm.bias': (16,),
    'roi_heads.box_head.fc1.weight': (32, 784),
    'roi_heads.box_head.fc1.bias': (32,),
    'roi_heads.box_predictor.cls_score.weight': (4, 32),
    'roi_heads.box_predictor.cls_score.bias': (4,),
    'roi_heads.box_predictor.bbox_pred.weight': (12, 32),
    'roi_heads.box_predictor.bbox_pred.bias': (12,),
    'roi_heads.mask_head.mask_fcn1.weight': (16, 16, 3, 3),
    'roi_heads.mask_head.mask_fcn1.norm.weight': (16,),
    'roi_heads.mask_head.mask_fcn1.norm.bias': (16,),
    'roi_heads.mask_head.mask_fcn2.weight': (16, 16, 3, 3),
    'roi_heads.mask_head.mask_fcn2.norm.weight': (16,),
    'roi_heads.mask_head.mask_fcn2.norm.bias': (16,),
    'roi_heads.mask_head.mask_fcn3.weight': (16, 16, 3, 3),
    'roi_heads.mask_head.mask_fcn3.norm.weight': (16,),
    'roi_heads.mask_head.mask_fcn3.norm.bias': (16,),
    'roi_heads.mask_head.mask_fcn4.weight': (16, 16, 3, 3),
    'roi_heads.mask_head.mask_fcn4.norm.weight': (16,),
    'roi_heads.mask_head.mask_fcn4.norm.bias': (16,),
    'roi_heads.mask_head.deconv.weight': (16, 16, 2, 2),
    'roi_heads.mask_head.deconv.bias': (16,),
    'roi_heads.mask_head.predictor.weight': (3, 16, 1, 1),
    'roi_heads.mask_head.predictor.bias': (3,),
}

# A few expected renames, written out (not computed by the code under test).
EXPECTED = {
    'backbone.net.blocks.1.attn.rel_pos_h': 'backbone.blocks.1.attn.rel_pos_h',
    'backbone.simfp_2.3.weight': 'neck.scale_layers.0.3.weight',
    'backbone.simfp_2.4.norm.bias': 'neck.lateral_convs.0.ln.bias',
    'backbone.simfp_2.5.weight': 'neck.fpn_convs.0.conv.weight',
    'backbone.simfp_3.0.bias': 'neck.scale_layers.1.0.bias',
    'backbone.simfp_4.0.weight': 'neck.lateral_convs.2.conv.weight',
    'backbone.simfp_5.2.norm.weight': 'neck.fpn_convs.3.ln.weight',
    'proposal_generator.rpn_head.conv.conv1.bias': 'rpn_head.rpn_conv.1.conv.bias',
    'proposal_generator.rpn_head.objectness_logits.weight': 'rpn_head.rpn_cls.weight',
    'proposal_generator.rpn_head.anchor_deltas.bias': 'rpn_head.rpn_reg.bias',
    'roi_heads.box_head.conv4.norm.weight': 'roi_head.bbox_head.shared_convs.3.ln.weight',
    'roi_heads.box_head.fc1.weight': 'roi_head.bbox_head.shared_fcs.0.weight',
    'roi_heads.box_predictor.cls_score.bias': 'roi_head.bbox_head.fc_cls.bias',
    'roi_heads.box_predictor.bbox_pred.weight': 'roi_head.bbox_head.fc_reg.weight',
    'roi_heads.mask_head.mask_fcn1.weight': 'roi_head.mask_head.convs.0.conv.weight',
    'roi_heads.mask_head.mask_fcn3.norm.bias': 'roi_head.mask_head.convs.2.ln.bias',
    'roi_heads.mask_head.deconv.weight': 'roi_head.mask_head.upsample.weight',
    'roi_heads.mask_head.predictor.bias': 'roi_head.mask_head.conv_logits.bias',
}


def _d2_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in D2_SHAPES.items()}


def _write_d2_pkl(path: Path, sd: dict[str, torch.Tensor], protocol: int = 4) -> None:
    obj = {
        'model': {k: v.numpy() for k, v in sd.items()},
        '__author__': 'Detectron2 Model Zoo',
        'matching_heuristics': True,
    }
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=protocol)


def _tiny_maskrcnn():
    """Tiny mmdet MaskRCNN with g2sd.ViTDetBackbone + g2sd.SimpleFPN (preamble interface 4)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    import g2sd.det  # noqa: F401  (registers ViTDetBackbone, SimpleFPN, LN2d)

    register_all_modules(init_default_scope=False)
    ln = dict(type='g2sd.LN2d')
    cfg = dict(
        type='mmdet.MaskRCNN',
        _scope_='mmdet',  # mmdet builds its inner defaults (losses, samplers) unprefixed
        data_preprocessor=dict(type='mmdet.DetDataPreprocessor', pad_size_divisor=32),
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
                type='mmdet.AnchorGenerator',
                scales=[8],
                ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64],
            ),
            bbox_coder=dict(
                type='mmdet.DeltaXYWHBBoxCoder',
                target_means=[0.0] * 4,
                target_stds=[1.0] * 4,
            ),
            loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
        ),
        roi_head=dict(
            type='mmdet.StandardRoIHead',
            bbox_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=16,
                featmap_strides=[4, 8, 16, 32],
            ),
            bbox_head=dict(
                type='mmdet.Shared4Conv1FCBBoxHead',
                in_channels=16,
                conv_out_channels=16,
                fc_out_channels=32,
                roi_feat_size=7,
                num_classes=3,
                norm_cfg=ln,
                bbox_coder=dict(
                    type='mmdet.DeltaXYWHBBoxCoder',
                    target_means=[0.0] * 4,
                    target_stds=[0.1, 0.1, 0.2, 0.2],
                ),
                reg_class_agnostic=False,
            ),
            mask_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
                out_channels=16,
                featmap_strides=[4, 8, 16, 32],
            ),
            mask_head=dict(
                type='mmdet.FCNMaskHead',
                num_convs=4,
                in_channels=16,
                conv_out_channels=16,
                num_classes=3,
                norm_cfg=ln,
            ),
        ),
        train_cfg=None,
        test_cfg=dict(
            rpn=dict(nms_pre=100, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7)),
            rcnn=dict(
                score_thr=0.05,
                nms=dict(type='nms', iou_threshold=0.5),
                max_per_img=10,
                mask_thr_binary=0.5,
            ),
        ),
    )
    return MODELS.build(ConfigDict(cfg))


def _run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    return subprocess.run(
        [sys.executable, str(TOOLS / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=ROOT,
    )


# --- conversion functions -----------------------------------------------------------------


def test_detectron2_to_mmdet_renames_every_key() -> None:
    d2 = _d2_state_dict()
    mm = dc.detectron2_to_mmdet(d2)
    assert len(mm) == len(d2) == 105
    inverse = {id(v): k for k, v in mm.items()}
    for d2_key, mm_key in EXPECTED.items():
        assert inverse[id(d2[d2_key])] == mm_key
    assert {k.split('.', 1)[0] for k in mm} == {'backbone', 'neck', 'rpn_head', 'roi_head'}
    assert mm['backbone.pos_embed'].shape == (1, 17, 32)  # kept at its pretraining grid


def test_round_trip_is_identity() -> None:
    d2 = _d2_state_dict()
    back = dc.mmdet_to_detectron2(dc.detectron2_to_mmdet(d2))
    assert sorted(back) == sorted(D2_SHAPES)
    assert all(back[k] is d2[k] for k in d2)
    # The other direction too, with explicit scale factors.
    mm = dc.detectron2_to_mmdet(d2)
    again = dc.detectron2_to_mmdet(dc.mmdet_to_detectron2(mm, scale_factors=(4, 2, 1, 0.5)))
    assert again.keys() == mm.keys()


def test_layout_detection() -> None:
    d2 = _d2_state_dict()
    assert dc.is_detectron2_layout(d2)
    assert not dc.is_detectron2_layout(dc.detectron2_to_mmdet(d2))
    assert not dc.is_detectron2_layout({'patch_embed.proj.weight': torch.zeros(1)})


@pytest.mark.parametrize(
    'extra',
    [
        'roi_heads.box_head.0.conv1.weight',  # cascade head
        'backbone.net.blocks.0.residual.conv1.weight',  # ViTDet residual block
        'roi_heads.keypoint_head.score_lowres.weight',
    ],
)
def test_unknown_keys_are_named(extra: str) -> None:
    d2 = _d2_state_dict()
    d2[extra] = torch.zeros(1)
    with pytest.raises(ValueError, match=extra.replace('.', r'\.')):
        dc.detectron2_to_mmdet(d2, source='f.pkl')


def test_unknown_mmdet_key_and_bad_scale_are_named() -> None:
    mm = dc.detectron2_to_mmdet(_d2_state_dict())
    with pytest.raises(ValueError, match=r'roi_head\.bbox_head\.cls_convs\.0\.conv\.weight'):
        dc.mmdet_to_detectron2({**mm, 'roi_head.bbox_head.cls_convs.0.conv.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='scale factor 8.0'):
        dc.mmdet_to_detectron2(mm, scale_factors=(8, 4, 2, 1))


def test_backbone_only_file_converts_the_backbone() -> None:
    d2 = {k: v for k, v in _d2_state_dict().items() if k.startswith('backbone.net.')}
    mm = dc.detectron2_to_mmdet(d2)
    assert len(mm) == 31 and all(k.startswith('backbone.') for k in mm)
    assert 'backbone.blocks.0.mlp.fc2.bias' in mm


def test_non_persistent_buffers_are_dropped() -> None:
    d2 = _d2_state_dict()
    d2['pixel_mean'] = torch.zeros(3, 1, 1)
    d2['proposal_generator.anchor_generator.cell_anchors.0'] = torch.zeros(3, 4)
    assert len(dc.detectron2_to_mmdet(d2)) == 105


def test_resample_rel_pos_tables() -> None:
    sd = {'blocks.0.attn.rel_pos_h': torch.arange(3.0)[:, None].repeat(1, 4), 'x': torch.ones(1)}
    target = {'blocks.0.attn.rel_pos_h': torch.zeros(5, 4), 'x': torch.zeros(1)}
    out = dc.resample_rel_pos_tables(sd, target)
    assert out['blocks.0.attn.rel_pos_h'].shape == (5, 4)
    # Linear, align_corners=False: 3 -> 5 rows of 0, 1, 2 gives 0, 0.4, 1, 1.6, 2.
    torch.testing.assert_close(
        out['blocks.0.attn.rel_pos_h'][:, 0], torch.tensor([0.0, 0.4, 1.0, 1.6, 2.0])
    )
    assert out['x'] is sd['x']


# --- safe reading -------------------------------------------------------------------------


@pytest.mark.parametrize('protocol', [2, 4])
def test_pkl_is_read_as_tensors(tmp_path: Path, protocol: int) -> None:
    d2 = _d2_state_dict()
    path = tmp_path / 'model_final.pkl'
    _write_d2_pkl(path, d2, protocol)
    obj = ck.load_file(path)
    assert obj['__author__'] == 'Detectron2 Model Zoo' and obj['matching_heuristics'] is True
    assert isinstance(obj['model']['roi_heads.box_head.fc1.weight'], torch.Tensor)
    for k, v in d2.items():
        torch.testing.assert_close(obj['model'][k], v, rtol=0, atol=0)
    sd = ck.extract_state_dict(obj)
    assert sorted(sd) == sorted(D2_SHAPES)


def test_d2_pth_is_read(tmp_path: Path) -> None:
    d2 = _d2_state_dict()
    path = tmp_path / 'model_0004999.pth'
    torch.save({'model': d2, 'iteration': 4999}, path)
    sd = ck.extract_state_dict(ck.load_file(path))
    assert sorted(sd) == sorted(D2_SHAPES)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pkl_refuses_os_system_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'model': {'w': np.zeros(2)}, 'x': _Evil(marker)}, f, protocol=4)
    with pytest.raises(ck.CheckpointError, match=r'(posix|os|nt)\.system'):
        ck.load_file(path)
    assert not marker.exists()


def test_pkl_refuses_ordered_dict(tmp_path: Path) -> None:
    path = tmp_path / 'od.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'model': OrderedDict(w=np.zeros(2))}, f, protocol=2)
    with pytest.raises(ck.CheckpointError, match=r'collections\.OrderedDict'):
        load_plain_pickle(path)


def test_pkl_refuses_object_arrays_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / 'bad.pkl'
    path.write_bytes(b'\x80\x04not a pickle')
    with pytest.raises(ck.CheckpointError, match='bad.pkl'):
        ck.load_file(path)


# --- the 'detector' load use ---------------------------------------------------------------


def test_detector_use_refuses_non_detector_model() -> None:
    with pytest.raises(TypeError, match='rpn_head'):
        ck.load_pretrained(torch.nn.Linear(2, 2), _d2_state_dict(), use='detector')


def test_detector_use_names_missing_rpn_head() -> None:
    model = torch.nn.Module()
    model.rpn_head = torch.nn.Conv2d(1, 1, 1)
    d2 = {k: v for k, v in _d2_state_dict().items() if k.startswith('backbone.')}
    with pytest.raises(ck.CheckpointError, match=r'RPN head \(rpn_head\.\*'):
        ck.load_pretrained(model, d2, use='detector', source='backbone_only.pkl')


def test_d2_pkl_loads_strictly_into_tiny_maskrcnn(tmp_path: Path) -> None:
    model = _tiny_maskrcnn()
    d2 = _d2_state_dict()
    path = tmp_path / 'model_final.pkl'
    _write_d2_pkl(path, d2)
    report = ck.load_pretrained(model, path, use='detector')
    model_sd = model.state_dict()
    assert sorted(report.loaded) == sorted(model_sd)
    assert not report.missing_allowed and not report.unexpected_ignored
    assert not report.resampled
    torch.testing.assert_close(
        model_sd['roi_head.bbox_head.fc_cls.weight'], d2['roi_heads.box_predictor.cls_score.weight']
    )
    torch.testing.assert_close(
        model_sd['neck.lateral_convs.3.ln.bias'], d2['backbone.simfp_5.1.norm.bias']
    )
    # Our mmdet state dict converts back to the detectron2 key set exactly.
    assert sorted(dc.mmdet_to_detectron2(model_sd)) == sorted(D2_SHAPES)


def test_detector_use_accepts_runner_and_distiller_checkpoints(tmp_path: Path) -> None:
    model = _tiny_maskrcnn()
    mm = dc.detectron2_to_mmdet(_d2_state_dict(1))
    runner = {'meta': {'iter': 3}, 'state_dict': mm}
    assert len(ck.load_pretrained(model, runner, use='detector').loaded) == 105
    distiller = {'student.' + k: v for k, v in mm.items()}
    distiller['teacher.backbone.pos_embed'] = torch.zeros(1)
    distiller['adapters.frs_feat.0.weight'] = torch.zeros(1)
    report = ck.load_pretrained(model, distiller, use='detector')
    assert report.dropped == ['adapters', 'teacher']
    wrong = dict(mm)
    wrong['roi_head.bbox_head.fc_cls.weight'] = torch.zeros(6, 32)
    with pytest.raises(ck.CheckpointError, match=r'roi_head\.bbox_head\.fc_cls\.weight'):
        ck.load_pretrained(model, wrong, use='detector')


def test_rel_pos_of_another_window_is_resampled_on_load() -> None:
    model = _tiny_maskrcnn()
    d2 = _d2_state_dict()
    d2['backbone.net.blocks.0.attn.rel_pos_h'] = torch.randn(5, 16)  # window 3
    report = ck.load_pretrained(model, d2, use='detector')
    assert report.resampled == ['backbone.blocks.0.attn.rel_pos_h']


# --- tools ---------------------------------------------------------------------------------


@pytest.mark.parametrize('tool', ['detectron2_to_mmdet.py', 'mmdet_to_detectron2.py'])
def test_tool_help(tool: str) -> None:
    res = _run_tool(tool, '--help')
    assert res.returncode == 0, res.stderr
    assert 'detectron2' in res.stdout and 'output' in res.stdout


def test_tools_round_trip_files(tmp_path: Path) -> None:
    d2 = _d2_state_dict()
    src = tmp_path / 'model_final.pkl'
    _write_d2_pkl(src, d2)
    mm_path = tmp_path / 'vitdet_mmdet.pth'
    res = _run_tool('detectron2_to_mmdet.py', str(src), str(mm_path))
    assert res.returncode == 0, res.stderr
    mm_obj = torch.load(mm_path, weights_only=True)
    assert mm_obj['meta']['source_format'] == 'detectron2'
    assert len(mm_obj['state_dict']) == 105
    assert 'neck.fpn_convs.0.conv.weight' in mm_obj['state_dict']
    # A DistillModel checkpoint: the student is exported, teacher and adapters dropped.
    distill = {'student.' + k: v for k, v in mm_obj['state_dict'].items()}
    distill['teacher.rpn_head.rpn_cls.weight'] = torch.zeros(1)
    distill['adapters.frs_feat.0.weight'] = torch.zeros(1)
    distill_path = tmp_path / 'iter_10.pth'
    torch.save({'meta': {'iter': 10}, 'state_dict': distill}, distill_path)
    out = tmp_path / 'student_d2.pkl'
    res = _run_tool('mmdet_to_detectron2.py', str(distill_path), str(out))
    assert res.returncode == 0, res.stderr
    with open(out, 'rb') as f:
        back = pickle.load(f)
    assert back['__author__'] == 'g2sd' and back['matching_heuristics'] is False
    assert sorted(back['model']) == sorted(D2_SHAPES)
    for k, v in d2.items():
        assert isinstance(back['model'][k], np.ndarray)
        np.testing.assert_array_equal(back['model'][k], v.numpy())
    # A file that is not detectron2: one-line error, exit 1, nothing written.
    bad_out = tmp_path / 'never.pth'
    res = _run_tool('detectron2_to_mmdet.py', str(distill_path), str(bad_out))
    assert res.returncode == 1
    assert 'detectron2_to_mmdet.py: error:' in res.stderr
    assert 'not a detectron2 ViTDet checkpoint' in res.stderr
    assert not bad_out.exists()


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gd_student_becomes_vitdet_init_checkpoint(tmp_path: Path) -> None:
    enc = {
        'cls_token': torch.randn(1, 1, 32),
        'pos_embed': torch.randn(1, 17, 32),
        'patch_embed.proj.weight': torch.randn(32, 3, 16, 16),
        'patch_embed.proj.bias': torch.randn(32),
        'blocks.0.norm1.weight': torch.randn(32),
        'blocks.0.attn.qkv.weight': torch.randn(96, 32),
        'norm.weight': torch.randn(32),
    }
    gd = {'student.' + k: v for k, v in enc.items()}
    gd['student.decoder_embed.weight'] = torch.randn(16, 32)
    gd['student.mask_token'] = torch.randn(1, 1, 16)
    gd['projector.fc1.weight'] = torch.randn(8, 16)
    src = tmp_path / 'gd.pth'
    torch.save({'state_dict': gd, 'meta': {'epoch': 1}}, src)
    out = tmp_path / 'student_init.pth'
    info = _load_tool('mmdet_to_detectron2').export(str(src), str(out))
    assert info['matching_heuristics'] is True
    written = torch.load(out, weights_only=True)
    assert written['matching_heuristics'] is True and written['__author__'] == 'g2sd'
    assert sorted(written['model']) == sorted(enc)  # MAE keys, decoder and projector dropped
    torch.testing.assert_close(written['model']['pos_embed'], enc['pos_embed'])


def test_export_refuses_wrong_suffix_and_d2_input(tmp_path: Path) -> None:
    tool = _load_tool('mmdet_to_detectron2')
    with pytest.raises(ValueError, match=r'\.pkl .*\.pth'):
        tool.export('x.pth', str(tmp_path / 'out.safetensors'))
    src = tmp_path / 'd2.pth'
    torch.save({'model': _d2_state_dict()}, src)
    with pytest.raises(ck.CheckpointError, match='already in detectron2 layout'):
        tool.export(str(src), str(tmp_path / 'out.pkl'))
