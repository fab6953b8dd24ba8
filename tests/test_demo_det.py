"""tools/demo_det.py: --help, argument errors and a tiny end-to-end run."""

import subprocess
import sys
from pathlib import Path

import pytest

from g2sd.checkpoint import save_state_dict
from g2sd.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[1]
STUDENT = dict(
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=48,
    depth=4,
    num_heads=3,
    decoder_embed_dim=32,
    decoder_depth=2,
    decoder_num_heads=2,
)
DET_TEACHER = ROOT / 'checkpoints' / 'fmnist_vitdet-teacher.pth'


def run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, 'tools/demo_det.py', *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help():
    out = run('--help')
    assert out.returncode == 0 and 'usage' in out.stdout and '--det-teacher' in out.stdout


def test_bad_iterations_named():
    out = run('--iters', '0')
    assert out.returncode == 2 and '--iters must be >= 1, got 0' in out.stderr


@pytest.mark.slow
def test_demo_det_tiny_run(tmp_path, fmnist_root):
    if not DET_TEACHER.exists():
        pytest.skip('shipped detection teacher not present')
    work = tmp_path / 'demo'
    for name in ('mae_student', 'g2sd_student'):
        (work / name).mkdir(parents=True)
        save_state_dict(
            MaskedAutoencoderViT(**STUDENT).state_dict(), str(work / name / 'student.pth')
        )
    out = run('--work-dir', work, '--iters', '2', '--num-train', '8', '--num-val', '4')
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for row in ('teacher (96-d ViTDet)', 'MAE', 'G2SD w/o SD', 'G2SD'):
        assert f'\n{row} ' in out.stdout
    assert 'box AP' in out.stdout and 'mask AP' in out.stdout
    assert (work / 'det' / 'results.txt').read_text() in out.stdout
    # nothing but the table on stdout: the training logs stay in the work dirs
    assert 'Epoch' not in out.stdout and 'Iter(train)' not in out.stdout
    assert (work / 'det' / 'g2sd' / 'run.log').exists()
