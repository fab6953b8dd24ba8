"""Tests of tools/demo.py: data-set plumbing (normalisation, cfg-options) and a tiny smoke run."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))

import demo  # noqa: E402


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a gzipped uint8 IDX file (the MNIST layout)."""
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(head + arr.tobytes())


def make_root(root: Path, n_train: int = 100, n_test: int = 50) -> Path:
    """A tiny 10-class idx folder in the Fashion-MNIST layout (28x28 images)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, n in (('train', n_train), ('t10k', n_test)):
        y = np.arange(n) % 10
        x = (rng.random((n, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)
        write_idx(root / f'{stem}-images-idx3-ubyte.gz', x)
        write_idx(root / f'{stem}-labels-idx1-ubyte.gz', y)
    return root


def test_norm_stats_from_bytes(tmp_path: Path) -> None:
    # train pixels /255: [0, 1, 0, 1, 1, 1, 0, 0] -> mean 0.5, population std 0.5
    write_idx(tmp_path / 'train-images-idx3-ubyte.gz', [[[0, 255], [0, 255]], [[255, 255], [0, 0]]])
    write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', [0, 1])
    assert demo.norm_stats(str(tmp_path)) == {'mean': 0.5, 'std': 0.5}
    assert demo.num_train_images(str(tmp_path)) == 2
    assert demo.dataset_name(str(tmp_path)) == tmp_path.name
    assert demo.dataset_name(None) == 'Fashion-MNIST'
    with pytest.raises(ValueError, match='no train-images'):
        demo.norm_stats(str(tmp_path / 'missing'))


def test_dataset_options_on_real_configs() -> None:
    norm = dict(mean=0.3, std=0.4)
    opts = demo.dataset_options('configs/cls/g2sd-sd_vit-student_fmnist.py', norm, '/data/x')
    assert 'train_dataloader.dataset.pipeline.1.p=0.0' in opts  # RandomHorizontalFlip
    assert 'train_dataloader.dataset.pipeline.3.mean=[0.3]' in opts
    assert 'test_dataloader.dataset.pipeline.1.std=[0.4]' in opts
    assert 'val_dataloader.dataset.root=/data/x' in opts
    kept = demo.dataset_options('configs/cls/g2sd-sd_vit-student_fmnist.py', norm, flip=True)
    assert not any(o.endswith('.p=0.0') for o in kept)
    det = demo.dataset_options('configs/det/vitdet_g2sd_fmnist.py', norm)
    assert 'train_dataloader.dataset.pipeline.2.prob=0.0' in det  # mmdet RandomFlip
    assert 'model.student.data_preprocessor.mean=[76.5]' in det  # 0.3 x 255
    assert 'model.student.data_preprocessor.std=[102.0]' in det


def test_dataset_options_merge_into_config() -> None:
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO / 'configs/pretrain/mae_vit-student_fmnist.py'))
    opts = demo.dataset_options(
        'configs/pretrain/mae_vit-student_fmnist.py', dict(mean=0.25, std=0.5)
    )
    from mmengine.config import DictAction

    parsed = {}
    for o in opts:
        k, v = o.split('=', 1)
        parsed[k] = DictAction._parse_iterable(v)
    cfg.merge_from_dict(parsed)
    pipe = cfg.train_dataloader.dataset.pipeline
    assert pipe[1]['type'] == 'RandomHorizontalFlip' and pipe[1]['p'] == 0.0
    assert pipe[3]['mean'] == [0.25] and pipe[3]['std'] == [0.5]


def test_log_progress() -> None:
    assert demo.log_progress('nothing yet') is None
    assert demo.log_progress('Epoch(train) [2][ 5/10] loss', epochs=4) == pytest.approx(15 / 40)
    assert demo.log_progress('Iter(train) [ 30/120] loss') == pytest.approx(0.25)


def test_help() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'demo.py'), '--help'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '--data-root' in out and '--seed' in out and '--tasks' in out


def test_smoke_tiny_root_with_teacher(tmp_path: Path) -> None:
    """Teacher step on a 100-image train split (no 60000), students, probes, one SD row."""
    root = make_root(tmp_path / 'tiny')
    work = tmp_path / 'work'
    cmd = [sys.executable, str(REPO / 'tools' / 'demo.py'), '--data-root', str(root)]
    cmd += ['--work-dir', str(work), '--train-teacher', '--teacher-epochs', '2', '--epochs', '2']
    cmd += ['--train-samples', '100', '--bank-samples', '100', '--test-samples', '50']
    cmd += ['--sd-samples', '60', '--batch-size', '20', '--linear-epochs', '10', '--seed', '3']
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'tiny: frozen-encoder probes' in proc.stdout
    assert 'raw pixels (no learning)' in proc.stdout and 'SD cls' in proc.stdout
    assert 'INFO' not in proc.stdout + proc.stderr
    res = json.loads((work / 'results.json').read_text())
    assert res['seed'] == 3 and res['dataset'] == 'tiny'
    assert set(res['probes']) >= {'raw pixels (no learning)', 'G2SD student'}
    assert (work / 'teacher' / 'fmnist_mae_vit-teacher.pth').exists()
    assert (work / 'demo.png').stat().st_size > 0
    log = (work / 'teacher' / 'run.log').read_text()
    assert 'num_samples must be' not in log
