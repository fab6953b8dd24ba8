"""tools/demo_seg.py: --help, argument and missing-file errors, its options, a tiny run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from g2sd.checkpoint import save_state_dict
from g2sd.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[1]
DEMO_SEG = ROOT / 'tools' / 'demo_seg.py'
TEACHER_CFG = ROOT / 'configs' / 'seg' / 'upernet_teacher_fmnist.py'
FMNIST_CFGS = [
    ROOT / 'configs' / 'seg' / f'upernet_{n}_fmnist.py'
    for n in ('teacher', 'mae', 'g2sd_nosd', 'g2sd')
]
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


def run(*args: object, timeout: int = 900) -> subprocess.CompletedProcess:
    # one torch thread per run: no OpenMP stalls on a CPU shared with other jobs
    return subprocess.run(
        [sys.executable, str(DEMO_SEG), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )


def load_tool():
    spec = importlib.util.spec_from_file_location('demo_seg_under_test', DEMO_SEG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_help() -> None:
    out = run('--help')
    assert out.returncode == 0 and 'usage' in out.stdout
    for word in ('--seg-teacher', '--train-teacher', '--work-dir', '--iters', '--data'):
        assert word in out.stdout


def test_bad_iterations_named() -> None:
    out = run('--iters', '0')
    assert out.returncode == 2 and '--iters must be >= 1, got 0' in out.stderr


def test_missing_teacher_names_the_command(tmp_path: Path) -> None:
    missing = tmp_path / 'no_teacher.pth'
    out = run('--work-dir', tmp_path / 'demo', '--seg-teacher', missing)
    assert out.returncode == 1
    assert f'segmentation teacher {missing} not found' in out.stderr
    assert 'python tools/train.py configs/seg/upernet_teacher_fmnist.py' in out.stderr
    assert "atomic_save(sd, 'checkpoints/fmnist_upernet-teacher.pth')" in out.stderr
    assert '--train-teacher' in out.stderr
    # it stops before anything runs: no student pre-training, no canvases
    assert not (tmp_path / 'demo').exists()


def test_missing_students_run_the_generic_demo_first(tmp_path: Path) -> None:
    teacher = tmp_path / 'teacher.pth'
    teacher.write_bytes(b'not read: the demo stops at the students')
    work = tmp_path / 'demo'
    out = run('--work-dir', work, '--seg-teacher', teacher, '--demo-args=--no-such-option')
    assert out.returncode == 1
    assert (
        f'pre-trained students missing under {work.resolve()}: running tools/demo.py' in out.stderr
    )
    # tools/demo.py ran (and refused the option): its failure and log are named
    assert 'failed (exit 2)' in out.stderr and 'tools/demo.py' in out.stderr
    assert 'unrecognized arguments: --no-such-option' in (work / 'demo.log').read_text()
    assert not (work / 'seg').exists()


def test_length_and_data_options(tmp_path: Path) -> None:
    tool = load_tool()
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(
        'train_cfg = dict(type="IterBasedTrainLoop", max_iters=800, val_interval=400)\n'
        'param_scheduler = [\n'
        '    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=51),\n'
        '    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=801),\n'
        ']\n'
        'train_dataloader = dict(dataset=dict(type="RepeatDataset", times=2,\n'
        '    dataset=dict(type="X", data_root="data/fmnist_ade/")))\n'
        'val_dataloader = dict(dataset=dict(type="X", data_root="data/fmnist_ade/"))\n'
        'test_dataloader = val_dataloader\n'
    )
    # ends are one past the last step (the configs' convention): 800 -> 80 iterations,
    # warm-up steps 0..50 -> 0..5 (end 6), poly steps 0..800 -> 0..80 (end 81)
    assert tool.length_options(str(cfg), 80) == [
        'train_cfg.max_iters=80',
        'train_cfg.val_interval=80',
        'default_hooks.checkpoint.interval=80',
        'param_scheduler.0.begin=0',
        'param_scheduler.0.end=6',
        'param_scheduler.1.begin=0',
        'param_scheduler.1.end=81',
    ]
    # 2 iterations: warm-up 0..50 -> 0..0 keeps one step (end 1); poly 0..2 (end 3)
    assert tool.length_options(str(cfg), 2)[3:] == [
        'param_scheduler.0.begin=0',
        'param_scheduler.0.end=1',
        'param_scheduler.1.begin=0',
        'param_scheduler.1.end=3',
    ]
    assert tool.length_options(str(cfg), None) == []
    assert tool.data_options(str(cfg), Path('/d')) == [
        'train_dataloader.dataset.dataset.data_root=/d/',
        'val_dataloader.dataset.data_root=/d/',
        'test_dataloader.dataset.data_root=/d/',
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    not all(p.exists() for p in FMNIST_CFGS), reason='fmnist seg configs not written yet'
)
def test_demo_seg_tiny_run(tmp_path: Path, fmnist_root: Path) -> None:
    from mmengine.config import Config

    import g2sd.seg  # noqa: F401  (registers the seg backbone)
    from g2sd.distill.base import build_model

    # a random teacher of the teacher config's architecture (the shipped one may be absent)
    teacher = tmp_path / 'seg_teacher.pth'
    model = Config.fromfile(str(TEACHER_CFG)).model.to_dict()
    model['backbone']['pretrained'] = None
    save_state_dict(build_model(model, 'seg teacher').state_dict(), str(teacher))
    work = tmp_path / 'demo'
    for name in ('mae_student', 'g2sd_student'):
        (work / name).mkdir(parents=True)
        save_state_dict(
            MaskedAutoencoderViT(**STUDENT).state_dict(), str(work / name / 'student.pth')
        )
    data = tmp_path / 'fmnist_ade'
    out = run(
        *('--work-dir', work, '--seg-teacher', teacher, '--data', data, '--iters', '2'),
        *('--num-train', '8', '--num-val', '4'),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(list((data / 'images' / 'training').glob('*.png'))) == 8
    for row in ('teacher (96-d UperNet)', 'MAE', 'G2SD w/o SD', 'G2SD'):
        assert f'\n{row} ' in out.stdout
    assert 'mIoU' in out.stdout and 'aAcc' in out.stdout and '4 val images' in out.stdout
    assert (work / 'seg' / 'results.txt').read_text() in out.stdout
    # nothing but the table on stdout: the training logs stay in the work dirs
    assert 'Iter(train)' not in out.stdout and 'Iter(test)' not in out.stdout
    assert (work / 'seg' / 'g2sd' / 'run.log').exists()
