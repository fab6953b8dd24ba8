"""Resume continues the run exactly (issue #7 §2) with the Fashion-MNIST MAE student config.

2 epochs straight == 1 epoch + kill + resume, bit for bit (RNG states restored); a mid-epoch
iteration checkpoint resumes at the next batch (32 iterations in all, not 34); restored
optimizer / scheduler values that differ from the config are named, and
``resume_hparams=config`` takes the config's.
"""

from __future__ import annotations

import logging
import math
import uuid
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from g2sd.engine.runner import G2SDRunner
from g2sd.registry import HOOKS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'pretrain' / 'mae_vit-student_fmnist.py'


class Killed(Exception):
    """Stands in for kill -9 right after a checkpoint was written."""


@HOOKS.register_module(name='KillAfterIterTestResume')
class KillAfterIter(Hook):
    """Raise after the given global iteration (after CheckpointHook has saved it)."""

    priority = 'LOWEST'

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            raise Killed(f'killed after iter {self.at}')


@HOOKS.register_module(name='CountItersTestResume')
class CountIters(Hook):
    counts: list[int] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        CountIters.counts.append(runner.iter + 1)


def make_cfg(work_dir: Path, *, epochs: int = 2, ckpt: dict | None = None, hooks=()) -> Config:
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'resume_{uuid.uuid4().hex[:8]}'
    cfg.train_dataloader.dataset.num_samples = 64
    cfg.train_dataloader.batch_size = 4  # 16 iterations per epoch
    cfg.train_cfg.max_epochs = epochs
    cfg.param_scheduler = [  # explicit (not the shared schedule config): the test's own literals
        dict(
            type='LinearLR',
            start_factor=1e-3,
            by_epoch=True,
            begin=0,
            end=1,
            convert_to_iter_based=True,
        ),
        dict(
            type='CosineAnnealingLR',
            T_max=epochs - 1,
            eta_min=1e-5,
            by_epoch=True,
            begin=1,
            end=epochs,
            convert_to_iter_based=True,
        ),
    ]
    cfg.optim_wrapper.optimizer.lr = 1.5e-3
    cfg.default_hooks.checkpoint = ckpt or dict(type='CheckpointHook', interval=1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=100)
    cfg.custom_hooks = list(hooks)
    cfg.log_level = 'WARNING'
    return cfg


def weights(runner: G2SDRunner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.fixture(scope='module')
def straight(tmp_path_factory, fmnist_root) -> dict[str, torch.Tensor]:
    runner = G2SDRunner.from_cfg(make_cfg(tmp_path_factory.mktemp('straight')))
    runner.train()
    assert runner.iter == 32
    return weights(runner)


def test_epoch_checkpoint_resume_is_bit_identical(tmp_path, straight):
    wd = tmp_path / 'wd'
    with pytest.raises(Killed):
        G2SDRunner.from_cfg(
            make_cfg(wd, hooks=[dict(type='KillAfterIterTestResume', at=17)])
        ).train()
    assert (wd / 'epoch_1.pth').is_file() and not (wd / 'epoch_2.pth').exists()
    cfg = make_cfg(wd)
    cfg.resume = True
    resumed = G2SDRunner.from_cfg(cfg)
    resumed.train()
    assert resumed.iter == 32
    assert_identical(weights(resumed), straight)


def test_mid_epoch_checkpoint_skips_consumed_batches(tmp_path, straight):
    wd = tmp_path / 'wd'
    ckpt = dict(type='CheckpointHook', interval=6, by_epoch=False)
    with pytest.raises(Killed):
        G2SDRunner.from_cfg(
            make_cfg(wd, ckpt=ckpt, hooks=[dict(type='KillAfterIterTestResume', at=20)])
        ).train()
    assert (wd / 'iter_18.pth').is_file()
    CountIters.counts = []
    cfg = make_cfg(wd, ckpt=ckpt, hooks=[dict(type='CountItersTestResume')])
    cfg.resume = True
    resumed = G2SDRunner.from_cfg(cfg)
    resumed.train()
    # resumed at iteration 18 (batch 2 of epoch 2): 14 more, 32 in all (not 18 + 16 = 34)
    assert CountIters.counts == list(range(19, 33))
    assert resumed.iter == 32 and resumed.epoch == 2
    assert_identical(weights(resumed), straight)


class Grab(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _resume_with(wd: Path, **overrides) -> tuple[G2SDRunner, list[str]]:
    cfg = make_cfg(wd)
    cfg.resume = True
    for k, v in overrides.items():
        cfg.merge_from_dict({k: v})
    runner = G2SDRunner.from_cfg(cfg)
    grab = Grab()
    runner.logger.addHandler(grab)
    runner.train()
    return runner, grab.messages


def test_changed_config_is_named_and_resume_hparams_config_wins(tmp_path, straight):
    wd = tmp_path / 'wd'
    with pytest.raises(Killed):
        G2SDRunner.from_cfg(
            make_cfg(wd, hooks=[dict(type='KillAfterIterTestResume', at=17)])
        ).train()
    first = torch.load(wd / 'epoch_1.pth', weights_only=True)
    changes = {'optim_wrapper.optimizer.lr': 3e-3, 'param_scheduler.1.eta_min': 1e-4}

    runner, messages = _resume_with(wd, **changes)
    warned = [m for m in messages if 'differ from the config' in m]
    assert len(warned) == 1, messages
    text = warned[0]
    assert 'optimizer groups (all ' in text and 'lr: 0.0015 (checkpoint) vs 0.003 (config)' in text
    assert 'param_scheduler[1] (CosineAnnealingLR) eta_min: 1e-05 (checkpoint) vs 0.0001' in text
    assert 'resume_hparams=config' in text
    # the checkpoint's values were used: the result equals the uninterrupted run
    assert_identical(weights(runner), straight)

    (wd / 'epoch_2.pth').unlink()
    (wd / 'last_checkpoint').write_text(str(wd / 'epoch_1.pth'))
    runner, messages = _resume_with(wd, resume_hparams='config', **changes)
    assert any('resume_hparams=config' in m and 'replace' in m for m in messages), messages
    groups = runner.optim_wrapper.optimizer.param_groups
    assert {g['initial_lr'] for g in groups} == {3e-3}
    cosine = runner.param_schedulers[1]
    assert cosine.eta_min == 1e-4
    # config's cosine (3e-3 -> 1e-4 over iterations 16..32), last applied step 15 of 16
    expected = 1e-4 + (3e-3 - 1e-4) * (1 + math.cos(math.pi * 15 / 16)) / 2
    assert groups[0]['lr'] == pytest.approx(expected, rel=1e-9)
    assert first['optimizer']['param_groups'][0]['initial_lr'] == 1.5e-3
