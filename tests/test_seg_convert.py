"""Tests of g2sd.seg.convert (mmseg / official BEiT <-> g2sd keys, use='segmentor') and its tools.

The reference model is mmseg 1.2.2's own ``mmseg.MAE`` backbone in the same tiny UperNet
(``tests/seg_tiny.py``): its outputs are the expected values of the numerics tests, and its
own ``relative_position_index`` buffers are the expected indices. The official G2SD / BEiT
layout is written out here by renaming keys by hand (``G2SD_seg_dis/src/backbone/mae.py``:
``backbone.blocks.*`` with ``attn.q_bias`` / ``v_bias`` / ``relative_position_index``,
``backbone.fpn1.{0,1,3}``, ``backbone.fpn2.0``), independently of the converter.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import ConfigDict
from seg_tiny import tiny_segmentor  # tests/ is on sys.path (no package)

from g2sd import checkpoint as ck
from g2sd.seg import convert as sc

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / 'tools' / 'convert'
DEPTH = 4

# A few renames, written out from mmseg's MAE and our ViT (not computed by the code under test).
EXPECTED = {
    'backbone.patch_embed.projection.weight': 'backbone.patch_embed.proj.weight',
    'backbone.layers.0.ln1.bias': 'backbone.blocks.0.norm1.bias',
    'backbone.layers.1.ln2.weight': 'backbone.blocks.1.norm2.weight',
    'backbone.layers.2.attn.qkv.bias': 'backbone.blocks.2.attn.qkv.bias',
    'backbone.layers.3.attn.proj.weight': 'backbone.blocks.3.attn.proj.weight',
    'backbone.layers.1.attn.relative_position_bias_table': (
        'backbone.blocks.1.attn.relative_position_bias_table'
    ),
    'backbone.layers.2.gamma_2': 'backbone.blocks.2.gamma_2',
    'backbone.layers.0.ffn.layers.0.0.weight': 'backbone.blocks.0.mlp.fc1.weight',
    'backbone.layers.3.ffn.layers.1.bias': 'backbone.blocks.3.mlp.fc2.bias',
    'neck.upsample_4x.1.running_var': 'neck.upsample_4x.1.running_var',
    'decode_head.conv_seg.weight': 'decode_head.conv_seg.weight',
    'auxiliary_head.conv_seg.bias': 'auxiliary_head.conv_seg.bias',
}


def _mae_backbone(img_size: int = 32, **kw) -> dict:
    """mmseg's own MAE, the twin of ``tiny_backbone()`` (LN eps 1e-6 as mmseg's MAE configs)."""
    cfg = dict(
        type='MAE',
        img_size=img_size,
        patch_size=4,
        in_channels=1,
        embed_dims=32,
        num_layers=DEPTH,
        num_heads=2,
        out_indices=[0, 1, 2, 3],
        init_values=1.0,
        drop_path_rate=0.0,
        norm_cfg=dict(type='LN', eps=1e-6),
    )
    cfg.update(kw)
    return cfg


def _build(backbone: dict | None = None, auxiliary: bool = True, seed: int = 0):
    """An eval-mode tiny segmentor with every float tensor random (tables, BN stats included)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    model = MODELS.build(ConfigDict(tiny_segmentor(backbone=backbone, auxiliary=auxiliary)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=g) * 0.3
            t.copy_(r.abs() + 0.5 if name.endswith('running_var') else r)
    # float64: the two implementations must agree to rounding, not to float32's 1e-5.
    return model.double().eval()


@pytest.fixture(scope='module')
def mm_model():
    return _build(_mae_backbone(), seed=1)


@pytest.fixture(scope='module')
def our_model():
    return _build(seed=2)


def _x() -> torch.Tensor:
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(5)).double()


@torch.no_grad()
def _outputs(model) -> tuple[list[torch.Tensor], torch.Tensor]:
    feats = model.extract_feat(_x())
    return list(feats), model.decode_head(feats)


def _assert_same_outputs(a, b) -> None:
    fa, la = _outputs(a)
    fb, lb = _outputs(b)
    assert len(fa) == len(fb) == 4
    for x, y in zip(fa, fb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-9)


def _official(ours_sd: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official G2SD / BEiT segmentor layout of our state dict, renamed by hand."""
    out: dict[str, torch.Tensor] = {}
    for k, v in ours_sd.items():
        if k.endswith('.attn.qkv.bias'):
            c = v.shape[0] // 3
            out[k.replace('qkv.bias', 'q_bias')] = v[:c].clone()
            out[k.replace('qkv.bias', 'v_bias')] = v[2 * c :].clone()
        elif k.startswith('neck.upsample_4x.'):
            out['backbone.fpn1.' + k[len('neck.upsample_4x.') :]] = v
        elif k.startswith('neck.upsample_2x.'):
            out['backbone.fpn2.' + k[len('neck.upsample_2x.') :]] = v
        else:
            out[k] = v
    for i in range(DEPTH):
        out[f'backbone.blocks.{i}.attn.relative_position_index'] = index.clone()
    return out


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- conversion functions -------------------------------------------------------------------


def test_mmseg_names_map_to_ours(mm_model) -> None:
    sd = mm_model.state_dict()
    ours = sc.mmseg_to_g2sd(sd)
    inverse = {id(v): k for k, v in ours.items()}
    for mm_key, our_key in EXPECTED.items():
        assert inverse[id(sd[mm_key])] == our_key
    assert not any('relative_position_index' in k for k in ours)
    n_index = sum(k.endswith('relative_position_index') for k in sd)
    assert n_index == DEPTH and len(ours) == len(sd) - DEPTH
    assert sc.is_mmseg_vit_layout(sd) and not sc.is_beit_layout(sd)
    assert not sc.is_mmseg_vit_layout(ours) and not sc.is_beit_layout(ours)


def test_mmseg_mae_and_ours_compute_the_same(mm_model) -> None:
    """The numerics test: mmseg's MAE and our ViT agree on converted weights."""
    ours = _build(seed=3)
    ours.load_state_dict(sc.mmseg_to_g2sd(mm_model.state_dict()), strict=True)
    _assert_same_outputs(mm_model, ours)
    # The bias tables are in play: zeroing one changes the features.
    with torch.no_grad():
        saved = ours.backbone.blocks[0].attn.relative_position_bias_table.clone()
        ours.backbone.blocks[0].attn.relative_position_bias_table.zero_()
        changed = ours.extract_feat(_x())[0]
        ours.backbone.blocks[0].attn.relative_position_bias_table.copy_(saved)
    assert not torch.allclose(changed, mm_model.extract_feat(_x())[0], atol=1e-3)


def test_round_trip_ours_mmseg_ours_is_exact(our_model, mm_model) -> None:
    sd = our_model.state_dict()
    mm = sc.g2sd_to_mmseg(sd)
    assert sorted(mm) == sorted(mm_model.state_dict())
    index = mm_model.state_dict()['backbone.layers.0.attn.relative_position_index']
    assert torch.equal(mm['backbone.layers.3.attn.relative_position_index'], index)
    back = sc.mmseg_to_g2sd(mm)
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # mmseg's own MAE loads the export strictly and computes what ours computes.
    twin = _build(_mae_backbone(), seed=4)
    twin.load_state_dict(mm, strict=True)
    _assert_same_outputs(our_model, twin)


def test_bare_backbone_converts_both_ways(mm_model) -> None:
    bare = {
        k[len('backbone.') :]: v
        for k, v in mm_model.state_dict().items()
        if k.startswith('backbone.')
    }
    ours = sc.mmseg_to_g2sd(bare)
    assert 'blocks.0.mlp.fc2.weight' in ours and 'patch_embed.proj.bias' in ours
    assert not any(k.startswith(('backbone.', 'layers.')) for k in ours)
    assert sorted(sc.g2sd_to_mmseg(ours)) == sorted(bare)


def test_official_beit_layout_converts_and_computes_the_same(our_model, mm_model) -> None:
    index = mm_model.state_dict()['backbone.layers.0.attn.relative_position_index']
    official = _official(our_model.state_dict(), index)
    assert sc.is_beit_layout(official) and not sc.is_mmseg_vit_layout(official)
    ours = sc.beit_to_g2sd(official)
    assert sorted(ours) == sorted(our_model.state_dict())
    # The key part of qkv.bias is gone (zeros), a softmax no-op: same outputs.
    assert torch.count_nonzero(ours['backbone.blocks.0.attn.qkv.bias'][32:64]) == 0
    assert torch.count_nonzero(our_model.state_dict()['backbone.blocks.0.attn.qkv.bias'][32:64])
    model = _build(seed=6)
    model.load_state_dict(ours, strict=True)
    _assert_same_outputs(our_model, model)


def test_official_backbone_only_file_under_model(our_model, mm_model) -> None:
    index = mm_model.state_dict()['backbone.layers.0.attn.relative_position_index']
    official = _official(our_model.state_dict(), index)
    bare = {
        k[len('backbone.') :]: v for k, v in official.items() if k.startswith('backbone.blocks')
    }
    bare['cls_token'] = official['backbone.cls_token']
    sd, dropped = sc.select_segmentor({'model': bare}, whole=False)
    assert not dropped
    assert 'blocks.2.attn.qkv.bias' in sd and 'blocks.2.attn.q_bias' not in sd
    assert not any('relative_position_index' in k for k in sd)
    with pytest.raises(ck.CheckpointError, match=r'not a whole segmentor.*blocks, cls_token'):
        sc.select_segmentor({'model': bare}, source='beit_backbone.pth')


def test_q_v_bias_assembly_and_split(caplog) -> None:
    sd = {
        'layers.0.attn.qkv.weight': torch.zeros(6, 2),
        'layers.0.attn.q_bias': torch.tensor([1.0, 2.0]),
        'layers.0.attn.v_bias': torch.tensor([5.0, 6.0]),
    }
    ours = sc.mmseg_to_g2sd(sd)
    assert torch.equal(ours['blocks.0.attn.qkv.bias'], torch.tensor([1.0, 2, 0, 0, 5, 6]))
    # Ours -> BEiT's q/v: the key part is dropped and reported when non-zero.
    ours['blocks.0.attn.qkv.bias'] = torch.tensor([1.0, 2, 3, 0, 5, 6])
    with caplog.at_level(logging.INFO, logger='g2sd.seg.convert'):
        mm = sc.g2sd_to_mmseg(ours, qv_bias=True, with_index=False)
    assert torch.equal(mm['layers.0.attn.q_bias'], torch.tensor([1.0, 2.0]))
    assert torch.equal(mm['layers.0.attn.v_bias'], torch.tensor([5.0, 6.0]))
    assert 'layers.0.attn.qkv.bias' not in mm
    assert 'key bias' in caplog.text and '3' in caplog.text
    with pytest.raises(ValueError, match=r'q_bias without its q/v partner'):
        sc.mmseg_to_g2sd({'layers.0.attn.q_bias': torch.zeros(2)})


def test_shared_rel_pos_bias_is_copied_into_every_block() -> None:
    table = torch.randn(15 * 15 + 3, 2)
    sd = {
        'rel_pos_bias.relative_position_bias_table': table,
        'blocks.0.norm1.weight': torch.ones(4),
        'blocks.1.norm1.weight': torch.ones(4),
    }
    ours = sc.beit_to_g2sd(sd)
    for i in (0, 1):
        assert torch.equal(ours[f'blocks.{i}.attn.relative_position_bias_table'], table)
    assert not any(k.startswith('rel_pos_bias') for k in ours)


def test_wrong_index_and_unknown_keys_are_named(mm_model) -> None:
    sd = dict(mm_model.state_dict())
    bad = sd['backbone.layers.1.attn.relative_position_index'].clone()
    bad[1, 2] += 1
    with pytest.raises(ValueError, match=r'layers\.1\.attn\.relative_position_index is not'):
        sc.mmseg_to_g2sd({**sd, 'backbone.layers.1.attn.relative_position_index': bad})
    extra = 'backbone.layers.0.attn.attn.in_proj_weight'  # mmseg's plain ViT, not MAE
    with pytest.raises(ValueError, match=extra.replace('.', r'\.')):
        sc.mmseg_to_g2sd({**sd, extra: torch.zeros(1)}, source='vit.pth')
    with pytest.raises(ValueError, match=r'rpn_head\.rpn_cls\.weight'):
        sc.g2sd_to_mmseg({'backbone.cls_token': torch.zeros(1), 'rpn_head.rpn_cls.weight': 1})
    with pytest.raises(ValueError, match=r'backbone\.fpn1 \(layers \[0, 1\]\)'):
        sc.beit_to_g2sd(
            {
                'backbone.fpn1.0.weight': torch.zeros(1),
                'backbone.fpn1.1.weight': torch.zeros(1),
            }
        )


# --- the 'segmentor' load use ---------------------------------------------------------------


def test_segmentor_use_mmseg_file_into_ours(mm_model, tmp_path: Path) -> None:
    path = tmp_path / 'upernet_mae.pth'
    torch.save({'state_dict': mm_model.state_dict(), 'meta': {'iter': 1}}, path)
    model = _build(seed=7)
    report = ck.load_pretrained(model, path, use='segmentor')
    assert sorted(report.loaded) == sorted(model.state_dict())
    assert not report.missing_allowed and not report.unexpected_ignored and not report.resampled
    _assert_same_outputs(mm_model, model)


def test_segmentor_use_ours_and_official_into_mmseg_mae(our_model, mm_model) -> None:
    twin = _build(_mae_backbone(), seed=8)
    report = ck.load_pretrained(twin, {'model': our_model.state_dict()}, use='segmentor')
    assert sorted(report.loaded) == sorted(twin.state_dict())
    _assert_same_outputs(our_model, twin)
    index = mm_model.state_dict()['backbone.layers.0.attn.relative_position_index']
    official = _official(our_model.state_dict(), index)
    twin2 = _build(_mae_backbone(), seed=9)
    ck.load_pretrained(twin2, official, use='segmentor')
    _assert_same_outputs(our_model, twin2)
    ours = _build(seed=10)
    ck.load_pretrained(ours, official, use='segmentor')
    _assert_same_outputs(our_model, ours)


def test_segmentor_use_mmseg_beit_with_q_v_biases_round_trips() -> None:
    beit = dict(_mae_backbone(), type='BEiT', qv_bias=True)
    src = _build(beit, seed=19)
    sd = src.state_dict()
    assert 'backbone.layers.0.attn.q_bias' in sd and 'backbone.pos_embed' not in sd
    ours = sc.mmseg_to_g2sd(sd)
    c = 32
    torch.testing.assert_close(
        ours['backbone.blocks.1.attn.qkv.bias'][2 * c :], sd['backbone.layers.1.attn.v_bias']
    )
    dst = _build(beit, seed=20)
    report = ck.load_pretrained(dst, {'state_dict': sd}, use='segmentor')
    assert sorted(report.loaded) == sorted(sd)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())
    _assert_same_outputs(src, dst)


def test_segmentor_use_resamples_pos_embed_and_bias_tables(mm_model) -> None:
    small = _build(_mae_backbone(img_size=24), seed=11)  # 6x6 grid: 11^2 + 3 = 124 rows
    sd = small.state_dict()
    assert sd['backbone.layers.0.attn.relative_position_bias_table'].shape == (124, 2)
    model = _build(seed=12)
    report = ck.load_pretrained(model, sd, use='segmentor')
    assert 'backbone.pos_embed' in report.resampled
    assert 'backbone.blocks.3.attn.relative_position_bias_table' in report.resampled
    table = model.state_dict()['backbone.blocks.3.attn.relative_position_bias_table']
    assert table.shape == (15 * 15 + 3, 2)
    # The three class rows are kept as they are.
    torch.testing.assert_close(
        table[-3:], sd['backbone.layers.3.attn.relative_position_bias_table'][-3:]
    )


def test_teacher_without_aux_head_accepts_a_file_with_one(mm_model) -> None:
    teacher = _build(auxiliary=False, seed=13)
    report = ck.load_pretrained(teacher, mm_model.state_dict(), use='segmentor')
    assert 'auxiliary_head' in report.dropped
    assert not any(k.startswith('auxiliary_head.') for k in report.loaded)
    # The reverse is strict: a model with an aux head needs it in the file.
    no_aux = {k: v for k, v in mm_model.state_dict().items() if not k.startswith('auxiliary_')}
    with pytest.raises(ck.CheckpointError, match=r'missing keys.*auxiliary_head\.'):
        ck.load_pretrained(_build(seed=14), no_aux, use='segmentor')


def test_segmentor_use_takes_the_distiller_student(our_model) -> None:
    sd = {'student.' + k: v for k, v in our_model.state_dict().items()}
    sd['teacher.backbone.cls_token'] = torch.zeros(1, 1, 32)
    model = _build(seed=15)
    report = ck.load_pretrained(model, sd, use='segmentor')
    assert report.dropped == ['teacher']
    _assert_same_outputs(our_model, model)


def test_segmentor_use_refuses_unrelated_files_and_models(our_model) -> None:
    detector = {
        'backbone.blocks.0.norm1.weight': torch.ones(32),
        'neck.lateral_convs.0.conv.weight': torch.zeros(16, 32, 1, 1),
        'rpn_head.rpn_cls.weight': torch.zeros(3, 16, 1, 1),
        'roi_head.bbox_head.fc_cls.weight': torch.zeros(4, 32),
    }
    with pytest.raises(
        ck.CheckpointError, match=r'det\.pth: not a whole segmentor.*backbone, neck, roi_head'
    ):
        ck.load_pretrained(_build(seed=16), detector, use='segmentor', source='det.pth')
    vit = {
        'cls_token': torch.zeros(1, 1, 32),
        'pos_embed': torch.zeros(1, 65, 32),
        'patch_embed.proj.weight': torch.zeros(32, 1, 4, 4),
        'blocks.0.norm1.weight': torch.ones(32),
    }
    with pytest.raises(ck.CheckpointError, match=r'blocks, cls_token, patch_embed, pos_embed'):
        ck.load_pretrained(_build(seed=17), vit, use='segmentor')
    with pytest.raises(TypeError, match='decode_head'):
        ck.load_pretrained(torch.nn.Linear(2, 2), our_model.state_dict(), use='segmentor')


# --- tools ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize('tool', ['mmseg_to_g2sd.py', 'g2sd_to_mmseg.py'])
def test_tool_help(tool: str) -> None:
    res = _run_tool(tool, '--help')
    assert res.returncode == 0, res.stderr
    assert 'mmseg' in res.stdout and '--overwrite' in res.stdout


def test_tools_convert_and_refuse_to_overwrite(mm_model, our_model, tmp_path: Path) -> None:
    src = tmp_path / 'upernet_mae.pth'
    torch.save({'state_dict': mm_model.state_dict(), 'meta': {'iter': 3}}, src)
    out = tmp_path / 'ours.pth'
    res = _run_tool('mmseg_to_g2sd.py', str(src), str(out))
    assert res.returncode == 0, res.stderr
    written = torch.load(out, weights_only=True)
    assert written['meta']['source_format'] == 'mmseg'
    assert sorted(written['state_dict']) == sorted(our_model.state_dict())
    before = out.read_bytes()
    res = _run_tool('mmseg_to_g2sd.py', str(src), str(out))
    assert res.returncode == 1 and 'mmseg_to_g2sd.py: error:' in res.stderr
    assert 'exists; pass --overwrite' in res.stderr
    assert out.read_bytes() == before
    # In-process from here on (the same entry points, no interpreter start-up).
    to_g2sd = _load_tool('mmseg_to_g2sd')
    to_mmseg = _load_tool('g2sd_to_mmseg')
    to_g2sd.main([str(src), str(out), '--overwrite'])
    # Ours -> mmseg: mmseg's own MAE loads the export strictly.
    ours_path = tmp_path / 'ours_runner.pth'
    torch.save({'state_dict': our_model.state_dict(), 'meta': {}}, ours_path)
    mm_out = tmp_path / 'mmseg.pth'
    to_mmseg.main([str(ours_path), str(mm_out)])
    twin = _build(_mae_backbone(), seed=18)
    twin.load_state_dict(torch.load(mm_out, weights_only=True)['state_dict'], strict=True)
    _assert_same_outputs(our_model, twin)
    with pytest.raises(SystemExit) as exc:
        to_mmseg.main([str(ours_path), str(mm_out)])
    assert exc.value.code == 1
    with pytest.raises(ck.CheckpointError, match='already in mmseg ViT layout'):
        to_mmseg.export(str(src), str(tmp_path / 'again.pth'))
    with pytest.raises(ck.CheckpointError, match='neither an mmseg ViT'):
        to_g2sd.convert(str(ours_path), str(tmp_path / 'never.pth'))
    assert not (tmp_path / 'never.pth').exists() and not (tmp_path / 'again.pth').exists()
