"""tools/demo.py and tools/benchmark/gd_step.py: --help and a tiny run of each."""

import subprocess
import sys
from pathlib import Path

import pytest

from g2sd.checkpoint import load_pretrained
from g2sd.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[1]
TEACHER = dict(
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=96,
    depth=6,
    num_heads=3,
    decoder_embed_dim=64,
    decoder_depth=4,
    decoder_num_heads=4,
)


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize('tool', ['tools/demo.py', 'tools/benchmark/gd_step.py'])
def test_help(tool):
    out = run(tool, '--help')
    assert out.returncode == 0 and 'usage' in out.stdout


def test_shipped_fmnist_teacher_is_a_full_mae():
    ckpt = ROOT / 'checkpoints' / 'fmnist_mae_vit-teacher.pth'
    if not ckpt.exists():
        pytest.skip('shipped teacher not present')
    report = load_pretrained(MaskedAutoencoderViT(**TEACHER), str(ckpt), use='mae_teacher')
    assert any(k.startswith('decoder_blocks.') for k in report.loaded)


def test_gd_step_benchmark_runs(tmp_path):
    out = run(
        'tools/benchmark/gd_step.py',
        '--batch-size',
        '1',
        '--iters',
        '1',
        '--warmup',
        '0',
        '--modes',
        'fp32',
        '--json',
        tmp_path / 'rows.json',
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'fp32' in out.stdout and 'GFLOP/s' in out.stdout
    import json

    (row,) = json.loads((tmp_path / 'rows.json').read_text())
    assert row['img_per_s'] > 0 and 0 < row['frac_of_peak'] < 2 and 0 < row['teacher_share'] < 1


def test_shipped_fmnist_cls_teacher_loads_strictly():
    from g2sd.models import VisionTransformer

    ckpt = ROOT / 'checkpoints' / 'fmnist_vit-teacher_cls.pth'
    teacher = VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=6, num_heads=3,
        num_classes=10, global_pool='avg',
    )  # fmt: skip
    report = load_pretrained(teacher, str(ckpt), use='encoder_teacher')
    assert 'head.weight' in report.loaded and 'fc_norm.weight' in report.loaded
