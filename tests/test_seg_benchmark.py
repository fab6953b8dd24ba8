"""tools/benchmark/seg_step.py: --help, argument errors, its grid helpers and tiny CPU runs."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from seg_tiny import tiny_backbone, tiny_segmentor

ROOT = Path(__file__).resolve().parents[1]
SEG_STEP = ROOT / 'tools' / 'benchmark' / 'seg_step.py'
PAPER_TI = ROOT / 'configs' / 'seg' / 'upernet_g2sd_ti.py'
NUMBER = r'(\d+(?:\.\d+)?)'
TRAIN_KEYS = {
    'model', 'mode', 'distill', 'step_ms', 'step_ms_all', 'img_per_s', 'teacher_ms',
    'teacher_share', 'peak_mib', 'step_mib', 'teacher_weights_mib', 'params_checked',
    'params_without_grad', 'teacher_params_with_grad',
}  # fmt: skip
SLIDE_KEYS = {
    'model', 'name', 'params_m', 'image', 'crop', 'stride', 'crops_per_image', 'batch',
    'img_per_s', 'speedup',
}  # fmt: skip


def run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SEG_STEP), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_tool():
    spec = importlib.util.spec_from_file_location('seg_step_under_test', SEG_STEP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def syncbn(cfg: dict) -> dict:
    """``cfg`` with every ``norm_cfg`` BN made SyncBN (as in the paper configs)."""
    if isinstance(cfg, dict):
        return {
            k: dict(v, type='SyncBN') if k == 'norm_cfg' and v.get('type') == 'BN' else syncbn(v)
            for k, v in cfg.items()
        }
    return cfg


def test_help() -> None:
    out = run('--help', timeout=60)
    assert out.returncode == 0 and out.stdout.startswith('usage'), out.stderr
    for word in ('--img-size', '--amp', '--batch-size', '--iters', '--warmup', '--device'):
        assert word in out.stdout
    for word in ('--json', '--cfg-options', '--depth', '--slide-iters'):
        assert word in out.stdout


@pytest.mark.parametrize(
    ('args', 'words'),
    [
        (('--img-size', '100'), ('--img-size', '100')),
        (('--batch-size', '1'), ('--batch-size', '>= 2', 'got 1')),
        (('--model', 'b'), ('--model', "'b'")),
        (('--depth', '3'), ('--depth', 'got 3')),
        (('--no-slide', '--no-train'), ('nothing to measure',)),
    ],
)
def test_rejects_bad_arguments(args: tuple[str, ...], words: tuple[str, ...]) -> None:
    out = run(*args, timeout=60)
    assert out.returncode == 2, out.stderr
    for word in words:
        assert word in out.stderr


def test_grid_helpers() -> None:
    tool = load_tool()
    # Paper: 512 crops, stride 341 (2/3), on 1024 images: 3 x 3 windows.
    assert tool.slide_stride(512) == (341, 341)
    assert tool.slide_crops(1024, 512, 341) == 9
    assert tool.slide_crops(512, 512, 341) == 1
    # 100 px, crop 64, stride 42: windows at 0 and 36 (last one clamped) per side.
    assert tool.slide_crops(100, 64, 42) == 4
    # Outputs of blocks (3, 5, 7, 11) of 12: kept at 12, the toy (0..3) / (1, 2, 3, 5) below.
    assert tool.scaled_out_indices((3, 5, 7, 11), 12, 12) == (3, 5, 7, 11)
    assert tool.scaled_out_indices((3, 5, 7, 11), 4, 12) == (0, 1, 2, 3)
    assert tool.scaled_out_indices((3, 5, 7, 11), 6, 12) == (1, 2, 3, 5)
    with pytest.raises(ValueError, match='not distinct'):
        tool.scaled_out_indices((3, 5, 7, 11), 5, 12)


def check_run(out: subprocess.CompletedProcess, json_path: Path, keys: list[str]) -> dict:
    """Table rows and JSON of a finished run of the students ``keys`` (with slide rows)."""
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    names = {'ti': 'ViT-Ti', 's': 'ViT-S'}
    for key in keys:
        # | student | mode | step ms | img/s | teacher ms | teacher % | peak MiB | step MiB |
        sd = re.search(
            rf'\| {names[key]} \| SD \(student \+ MAE-B teacher\) \| {NUMBER} \| {NUMBER} \| '
            rf'{NUMBER} \| {NUMBER}% \| {NUMBER} \| (-?\d+) \|',
            out.stdout,
        )
        nosd = re.search(
            rf'\| {names[key]} \| no SD \(student only\) \| {NUMBER} \| {NUMBER} \| - \| - \| '
            rf'{NUMBER} \| (-?\d+) \|',
            out.stdout,
        )
        assert sd and nosd, out.stdout
        step_ms, img_s, teacher_ms, share = (float(sd.group(i)) for i in range(1, 5))
        assert step_ms > 0 and img_s > 0 and 0 < teacher_ms < step_ms and 0 < share < 100
    assert out.stdout.count('got a gradient') == 2 * len(keys)
    assert 'NO, without gradient' not in out.stdout
    assert out.stdout.count('teacher tensors with a gradient: 0') == 2 * len(keys)
    data = json.loads(json_path.read_text())
    rows = data['rows']
    assert [(r['model'], r['distill']) for r in rows] == [
        (k, d) for k in keys for d in (True, False)
    ]
    for r in rows:
        assert set(r) == TRAIN_KEYS
        assert all(math.isfinite(r[k]) for k in ('step_ms', 'img_per_s', 'peak_mib', 'step_mib'))
        assert r['peak_mib'] > 0 and r['params_without_grad'] == []
        assert r['img_per_s'] == pytest.approx(2 / (r['step_ms'] / 1e3))  # batch 2
        assert r['step_ms'] == pytest.approx(r['step_ms_all'][0]) and len(r['step_ms_all']) == 1
    for sd, nosd in zip(rows[::2], rows[1::2]):
        assert sd['teacher_share'] == pytest.approx(sd['teacher_ms'] / sd['step_ms'])
        assert nosd['teacher_ms'] == 0 and nosd['teacher_share'] == 0
    assert [r['model'] for r in data['slide']] == [*keys, 'b']
    for r in data['slide']:
        assert set(r) == SLIDE_KEYS and r['img_per_s'] > 0
        # 128 px images, crop 64, stride 42: 3 x 3 windows
        assert (r['image'], r['crop'], r['stride'], r['crops_per_image']) == (128, 64, 42, 9)
    b = data['slide'][-1]
    assert b['speedup'] == 1.0
    for r in data['slide'][:-1]:
        assert r['speedup'] == pytest.approx(r['img_per_s'] / b['img_per_s'])
        assert r['params_m'] < b['params_m']
    assert '| ViT-B UperNet (MAE-B teacher) |' in out.stdout
    return data


@pytest.mark.slow
def test_tiny_config_run(tmp_path: Path) -> None:
    """A tiny SD config (SyncBN as in the paper) through the whole tool."""
    teacher = tiny_segmentor(embed_dim=64, backbone=tiny_backbone(embed_dim=64, num_heads=4))
    cfg = dict(
        custom_imports=dict(imports=['g2sd.engine', 'g2sd.distill', 'g2sd.seg']),
        model=dict(
            type='g2sd.DistillModel',
            student=syncbn(tiny_segmentor()),
            teacher=syncbn(teacher),
            distill=[
                dict(
                    name='cwd',
                    student='decode_head.conv_seg',
                    teacher='decode_head.conv_seg',
                    loss=dict(type='g2sd.ChannelWiseDivergence', tau=1.0, loss_weight=3.0),
                )
            ],
        ),
        optim_wrapper=dict(
            type='OptimWrapper',
            constructor='g2sd.LayerDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
            paramwise_cfg=dict(layer_decay_rate=0.65),
        ),
    )
    Config(cfg).dump(str(tmp_path / 'tiny_ti.py'))
    out = run(
        *('--config', tmp_path / 'tiny_{model}.py', '--model', 'ti', '--img-size', '64'),
        *('--depth', '4', '--batch-size', '2', '--iters', '1', '--warmup', '0'),
        *(
            '--slide-iters',
            '1',
            '--device',
            'cpu',
            '--threads',
            '1',
            '--json',
            tmp_path / 'rows.json',
        ),
    )
    data = check_run(out, tmp_path / 'rows.json', ['ti'])
    # SyncBN per segmentor: neck fpn1 1 + UPerHead (4 PPM + bottleneck + 3 lateral + 3 fpn +
    # fpn_bottleneck = 12) + FCN aux 1 = 14; student + teacher trained, then both for slide.
    assert data['syncbn_reverted'] == 4 * 14
    assert 'converted to BatchNorm' in out.stdout
    # CWD with equal class counts has no align conv: SD trains exactly the student tensors.
    assert data['rows'][0]['params_checked'] == data['rows'][1]['params_checked']


@pytest.mark.slow
@pytest.mark.skipif(not PAPER_TI.exists(), reason='paper seg configs not written yet')
def test_paper_configs_tiny_run(tmp_path: Path) -> None:
    """The paper's Ti SD config (SegViT + Feature2Pyramid + UPerHead, SyncBN) at 64 px, 4 blocks."""
    out = run(
        *('--model', 'ti', '--img-size', '64', '--depth', '4', '--batch-size', '2'),
        *(
            '--iters',
            '1',
            '--warmup',
            '0',
            '--slide-iters',
            '1',
            '--device',
            'cpu',
            '--threads',
            '1',
        ),
        *('--json', tmp_path / 'rows.json'),
    )
    data = check_run(out, tmp_path / 'rows.json', ['ti'])
    # student + teacher trained, then Ti and B for slide: 14 SyncBN each (see above)
    assert data['syncbn_reverted'] == 4 * 14
