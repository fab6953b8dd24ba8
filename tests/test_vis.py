"""Training curves: the configs' visualizer (LocalVisBackend) and tools/train.py --vis."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from g2sd.analysis.report import find_scalars, read_scalars
from g2sd.engine import cli
from g2sd.engine.cli import add_common_args, apply_common_args, configure_vis

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / 'tools' / 'train.py'
MAE_CFG = REPO / 'configs/pretrain/mae_vit-student_fmnist.py'
REAL_FIND_SPEC = importlib.util.find_spec


def parse(argv: list[str], *, train: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_common_args(parser, amp=train)
    return parser.parse_args(argv)


def installed(monkeypatch: pytest.MonkeyPatch, *present: str) -> None:
    """Pretend exactly ``present`` of tensorboard / wandb are importable."""

    def find_spec(name: str, *a, **k):
        if name in ('tensorboard', 'wandb'):
            return object() if name in present else None
        return REAL_FIND_SPEC(name, *a, **k)

    monkeypatch.setattr(cli.importlib.util, 'find_spec', find_spec)


def backend_types(cfg: Config) -> list[str]:
    return [b['type'] for b in cfg.visualizer['vis_backends']]


def test_configs_write_scalars_with_local_vis_backend() -> None:
    configs = sorted((REPO / 'configs').glob('*/*.py'))  # pretrain, cls, det, seg
    assert len(configs) > 40
    for config in configs:
        cfg = Config.fromfile(str(config))
        assert cfg.visualizer['type'] == 'Visualizer', config
        assert cfg.visualizer['_scope_'] == 'mmengine'
        assert backend_types(cfg) == ['LocalVisBackend']
    args = parse([str(MAE_CFG)])
    assert args.vis is None
    cfg = apply_common_args(Config.fromfile(str(MAE_CFG)), args)
    assert backend_types(cfg) == ['LocalVisBackend']  # no --vis: the config's


def test_vis_switch_adds_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    installed(monkeypatch, 'tensorboard', 'wandb')
    argv = [str(MAE_CFG), '--vis', 'tensorboard', '--vis', 'wandb', '--vis', 'tensorboard']
    cfg = apply_common_args(Config.fromfile(str(MAE_CFG)), parse(argv))
    assert backend_types(cfg) == ['LocalVisBackend', 'TensorboardVisBackend', 'WandbVisBackend']
    assert cfg.visualizer['type'] == 'Visualizer'
    cfg = apply_common_args(Config.fromfile(str(MAE_CFG)), parse([str(MAE_CFG), '--vis', 'local']))
    assert backend_types(cfg) == ['LocalVisBackend']
    # A det / seg visualizer type and its own backends are kept; LocalVisBackend is added.
    cfg = Config(dict(visualizer=dict(type='DetLocalVisualizer', vis_backends=[dict(type='X')])))
    configure_vis(cfg, ['tensorboard'])
    assert cfg.visualizer['type'] == 'DetLocalVisualizer'
    assert backend_types(cfg) == ['X', 'LocalVisBackend', 'TensorboardVisBackend']
    cfg = configure_vis(Config(dict()), ['tensorboard'])  # a config without a visualizer
    assert backend_types(cfg) == ['LocalVisBackend', 'TensorboardVisBackend']
    # The dict builds mmengine's visualizer with those backends (they start lazily).
    from mmengine.registry import VISUALIZERS

    cfg = apply_common_args(
        Config.fromfile(str(MAE_CFG)), parse([str(MAE_CFG), '--vis', 'tensorboard'])
    )
    vis = VISUALIZERS.build(dict(cfg.visualizer, name='test_vis_switch', save_dir=str(tmp_path)))
    assert [type(b).__name__ for b in vis._vis_backends.values()] == [
        'LocalVisBackend',
        'TensorboardVisBackend',
    ]


def test_vis_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    installed(monkeypatch, 'wandb')
    cfg = Config.fromfile(str(MAE_CFG))
    with pytest.raises(ValueError, match=r"'tensorboard'.*pip install -e \.\[tensorboard\]"):
        apply_common_args(cfg, parse([str(MAE_CFG), '--vis', 'tensorboard']))
    installed(monkeypatch)
    with pytest.raises(ValueError, match=r'pip install -e \.\[wandb\]'):
        configure_vis(cfg, ['wandb'])
    with pytest.raises(ValueError, match="'mlflow'"):
        configure_vis(cfg, ['mlflow'])
    assert backend_types(cfg) == ['LocalVisBackend']  # nothing applied
    with pytest.raises(SystemExit):  # argparse refuses an unknown choice
        parse([str(MAE_CFG), '--vis', 'mlflow'])
    assert not hasattr(parse([str(MAE_CFG)], train=False), 'vis')  # tools/test.py: no --vis


def test_train_help_and_tiny_run_writes_loss_scalars(tmp_path: Path, fmnist_root: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('LOCAL_RANK', None)
    proc = subprocess.run(
        [sys.executable, str(TRAIN), '--help'], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert '--vis' in proc.stdout and 'tensorboard' in proc.stdout
    work = tmp_path / 'run'
    cmd = [
        sys.executable, str(TRAIN), str(MAE_CFG), '--work-dir', str(work), '--vis', 'local',
        '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.dataset.num_samples=8',
        'train_dataloader.batch_size=4', 'train_dataloader.num_workers=0',
        f'train_dataloader.dataset.root={fmnist_root}',
        'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=1000',
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scalars = find_scalars(work)
    assert scalars.parent.name == 'vis_data' and scalars.parent.parent.parent == work
    steps, losses = read_scalars(scalars, 'loss')
    assert steps == [1.0, 2.0]  # 8 images / batch 4, one record per iteration
    assert all(0.0 < v < 100.0 for v in losses)
