"""tools/benchmark/det_step.py and throughput.py --task det: --help and a tiny CPU run of each."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DET_STEP = ROOT / 'tools' / 'benchmark' / 'det_step.py'
THROUGHPUT = ROOT / 'tools' / 'benchmark' / 'throughput.py'
NUMBER = r'(\d+(?:\.\d+)?)'


def run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ('tool', 'words'),
    [(DET_STEP, ['--img-size', '--amp', '--depth', '--json']), (THROUGHPUT, ['--task', 'det'])],
)
def test_help(tool: Path, words: list[str]) -> None:
    out = run(tool, '--help', timeout=60)
    assert out.returncode == 0 and out.stdout.startswith('usage'), out.stderr
    for word in words:
        assert word in out.stdout


def test_det_step_rejects_bad_size() -> None:
    out = run(DET_STEP, '--img-size', '100', timeout=60)
    assert out.returncode == 2 and '--img-size' in out.stderr and '100' in out.stderr


@pytest.mark.slow
def test_det_step_tiny_run(tmp_path: Path) -> None:
    out = run(
        DET_STEP,
        *('--model', 'ti', '--img-size', '64', '--depth', '2', '--batch-size', '1'),
        *('--iters', '1', '--warmup', '0', '--rois', '16', '--num-boxes', '2', '--device', 'cpu'),
        *('--json', tmp_path / 'rows.json'),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Table rows: student, mode, step ms, img/s, teacher ms, teacher %, peak MiB, step MiB.
    sd = re.search(
        rf'ViT-Ti\s+SD \(student \+ ViTDet-B teacher\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+'
        rf'{NUMBER}%\s+{NUMBER}\s+(-?\d+)',
        out.stdout,
    )
    nosd = re.search(
        rf'ViT-Ti\s+no SD \(student only\)\s+{NUMBER}\s+{NUMBER}\s+-\s+-\s+{NUMBER}\s+(-?\d+)',
        out.stdout,
    )
    assert sd and nosd, out.stdout
    step_ms, img_s, teacher_ms, share = (float(sd.group(i)) for i in range(1, 5))
    assert step_ms > 0 and img_s > 0 and 0 < teacher_ms < step_ms and 0 < share < 100
    assert float(nosd.group(1)) > 0 and float(nosd.group(2)) > 0
    # Every trainable parameter got a gradient in both modes; the teacher none.
    assert out.stdout.count('got a gradient') == 2 and 'NO, without gradient' not in out.stdout
    assert out.stdout.count('teacher tensors with a gradient: 0') == 2
    rows = json.loads((tmp_path / 'rows.json').read_text())['rows']
    assert [(r['model'], r['distill']) for r in rows] == [('ti', True), ('ti', False)]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ('step_ms', 'img_per_s', 'peak_mib', 'step_mib'))
        assert r['peak_mib'] > 0 and r['params_without_grad'] == []
    # The SD step trains the adapters on top of the student: more tensors are checked.
    assert rows[0]['params_checked'] > rows[1]['params_checked']
    assert rows[0]['teacher_share'] == pytest.approx(rows[0]['teacher_ms'] / rows[0]['step_ms'])


@pytest.mark.slow
def test_throughput_det_tiny_run(tmp_path: Path) -> None:
    out = run(
        THROUGHPUT,
        *('--task', 'det', '--models', 'ti,b', '--img-size', '64', '--depth', '2'),
        *('--batch-size', '1', '--iters', '1', '--warmup', '0', '--proposals', '8'),
        *('--device', 'cpu', '--json', tmp_path / 't.json'),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert 'Mask R-CNN inference throughput' in out.stdout
    for name in ('ViTDet-Ti (G2SD student)', 'ViTDet-B teacher'):
        row = re.search(rf'{re.escape(name)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+-', out.stdout)
        assert row, out.stdout
        assert all(math.isfinite(float(g)) and float(g) > 0 for g in row.groups())
    data = json.loads((tmp_path / 't.json').read_text())
    assert data['task'] == 'det' and [r['key'] for r in data['rows']] == ['ti', 'b']
    ti, b = data['rows']
    assert b['speedup'] == 1.0 and ti['speedup'] == pytest.approx(ti['img_per_s'] / b['img_per_s'])
    # ViTDet-B has more parameters than ViTDet-Ti (same heads, wider backbone and neck input).
    assert b['params_m'] > ti['params_m']
