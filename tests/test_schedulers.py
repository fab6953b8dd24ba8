"""g2sd.WarmupCosineLR vs mmengine's LinearLR + CosineAnnealingLR pair, built directly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from torch import nn

import g2sd.engine.schedulers  # noqa: F401  (registers g2sd.WarmupCosineLR)
from g2sd.engine.schedulers import WarmupCosineLR
from g2sd.registry import PARAM_SCHEDULERS

REPO = Path(__file__).resolve().parents[1]


def _optimizer(lr: float) -> torch.optim.Optimizer:
    """Two param groups with different base lrs (as layer decay makes them)."""
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{'params': [a]}, {'params': [b], 'lr': lr * 0.75**3}], lr=lr)


def _lrs(schedulers: list, optimizer: Any, iters: int) -> list[list[float]]:
    """lr of every group at each iteration, stepping as mmengine's ParamSchedulerHook does."""
    out = []
    for _ in range(iters):
        out.append([g['lr'] for g in optimizer.param_groups])
        optimizer.step()
        for s in schedulers:
            s.step()
    return out


def _pair(optimizer, epoch_length, warmup, max_epochs, start_factor, **eta):
    """The 2-entry param_scheduler the configs restated before (mmengine classes only)."""
    cfgs = [
        dict(
            type='LinearLR',
            start_factor=start_factor,
            by_epoch=True,
            begin=0,
            end=warmup,
            convert_to_iter_based=True,
        ),
        dict(
            type='CosineAnnealingLR',
            T_max=max(max_epochs - warmup, 1),
            by_epoch=True,
            begin=warmup,
            end=max(max_epochs, warmup + 1),
            convert_to_iter_based=True,
            **eta,
        ),
    ]
    args = dict(optimizer=optimizer, epoch_length=epoch_length)
    return [MMENGINE_PARAM_SCHEDULERS.build(c, default_args=args) for c in cfgs]


def _ours(optimizer, epoch_length, warmup, max_epochs, start_factor, **eta):
    cfg = dict(
        type='g2sd.WarmupCosineLR',
        warmup=warmup,
        warmup_start_factor=start_factor,
        convert_to_iter_based=True,
        end=max_epochs,  # what Runner._build_param_scheduler sets from train_cfg.max_epochs
        **eta,
    )
    args = dict(optimizer=optimizer, epoch_length=epoch_length)
    return [PARAM_SCHEDULERS.build(cfg, default_args=args)]


# (warm-up epochs, epochs, start factor, lr, eta) of the paper / demo recipes.
RECIPES = {
    'g2sd_gd_pretrain': (10, 300, 1e-4, 2.4e-3, dict(eta_min=2.5e-6)),
    'mae_pretrain': (40, 400, 1e-4, 2.4e-3, dict(eta_min=0.0)),
    'cls_sd': (5, 200, 1e-3, 4e-3, dict(eta_min_ratio=1e-6 / 4e-3)),
    'fmnist_pretrain': (1, 10, 1e-3, 1.5e-3, dict(eta_min=1e-5)),
    'fmnist_cls_one_epoch': (1, 1, 1e-3, 2e-3, dict(eta_min_ratio=1e-3)),
}


@pytest.mark.parametrize('recipe', sorted(RECIPES))
def test_equals_the_mmengine_pair_at_every_iteration(recipe: str) -> None:
    warmup, epochs, factor, lr, eta = RECIPES[recipe]
    epoch_length = 2
    # ... and a few past the end, where the lr stays (the one-epoch pair's cosine would run on)
    iters = epochs * epoch_length + (3 if epochs > warmup else 0)
    opt_a, opt_b = _optimizer(lr), _optimizer(lr)
    ref = _lrs(_pair(opt_a, epoch_length, warmup, epochs, factor, **eta), opt_a, iters)
    ours = _lrs(_ours(opt_b, epoch_length, warmup, epochs, factor, **eta), opt_b, iters)
    assert ours == ref  # same chainable formulas in the same order: bit-identical


def test_closed_form_literal_values() -> None:
    # 2 warm-up iterations from factor 0.5, then cosine over 4 iterations to eta_min 0.
    opt = _optimizer(1.0)
    sched = WarmupCosineLR(opt, warmup=2, warmup_start_factor=0.5, eta_min=0.0, end=6)
    got = [lr for lr, _ in _lrs([sched], opt, 7)]
    c = [(1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]  # 1, 0.854, 0.5, 0.146
    assert got == pytest.approx([0.5, 1.0, *c, c[-1]], rel=1e-12)
    assert got[4] == pytest.approx(0.5)


def _runner_schedule(tmp_path: Path, max_epochs: int, epoch_length: int):
    """Build the pre-training schedule config through mmengine's Runner, max_epochs overridden."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x, mode='tensor'):  # pragma: no cover - never run
            return {'loss': self.fc(x).sum()}

    cfg = Config.fromfile(str(REPO / 'configs/_base_/schedules/pretrain_adamw_cosine.py'))
    cfg.merge_from_dict({'train_cfg.max_epochs': max_epochs})  # = --cfg-options, alone
    loader = torch.utils.data.DataLoader(torch.zeros(epoch_length, 2), batch_size=1)
    runner = Runner(
        model=Toy(),
        work_dir=str(tmp_path / f'e{max_epochs}'),
        train_dataloader=loader,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.param_scheduler,
        train_cfg=cfg.train_cfg,
        default_scope='g2sd',
    )
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    return runner.build_param_scheduler(runner.param_schedulers), runner.optim_wrapper


@pytest.mark.parametrize('max_epochs', [12, 20])
def test_max_epochs_alone_rescales_the_schedule(tmp_path: Path, max_epochs: int) -> None:
    epoch_length = 2
    (sched,), optim_wrapper = _runner_schedule(tmp_path, max_epochs, epoch_length)
    assert isinstance(sched, WarmupCosineLR) and not sched.by_epoch
    assert (sched.warmup, sched.end, sched.T_max) == (20, 2 * max_epochs, 2 * max_epochs - 20)
    iters = max_epochs * epoch_length
    lr = 1.5e-4 * 4096 / 256
    ours = _lrs([sched], optim_wrapper, iters)
    ref_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    pair = _pair(ref_opt, epoch_length, 10, max_epochs, 1e-4, eta_min=2.5e-6)
    ref = _lrs(pair, ref_opt, iters)
    assert [group_lrs[0] for group_lrs in ours] == [r[0] for r in ref]
    # Closed form at the last iteration of the new length: cosine step T - 1 of T.
    t = 2 * max_epochs - 20
    last = 2.5e-6 + (lr - 2.5e-6) * (1 + math.cos(math.pi * (t - 1) / t)) / 2
    assert ours[-1][0] == pytest.approx(last, rel=1e-12)


def test_state_dict_is_plain_data_and_resumes(tmp_path: Path) -> None:
    def build(opt):
        return WarmupCosineLR(opt, warmup=3, warmup_start_factor=0.1, eta_min=0.01, end=10)

    opt = _optimizer(1.0)
    sched = build(opt)
    _lrs([sched], opt, 5)
    path = tmp_path / 'ckpt.pth'
    torch.save({'optimizer': opt.state_dict(), 'scheduler': sched.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['scheduler']['T_max'] == 7 and ckpt['scheduler']['last_step'] == 5
    rest = _lrs([sched], opt, 5)
    # As Runner.resume: build the scheduler, then load the optimizer, then the scheduler.
    opt2 = _optimizer(1.0)
    resumed = build(opt2)
    opt2.load_state_dict(ckpt['optimizer'])
    resumed.load_state_dict(ckpt['scheduler'])
    assert _lrs([resumed], opt2, 5) == rest


def test_argument_errors() -> None:
    opt = _optimizer(1.0)
    with pytest.raises(ValueError, match='needs an end'):
        WarmupCosineLR(opt, warmup=1)
    with pytest.raises(ValueError, match='not both'):
        WarmupCosineLR(opt, eta_min=0.0, eta_min_ratio=0.1, end=4)
    with pytest.raises(ValueError, match=r'warmup_start_factor must be in \(0, 1\], got 0'):
        WarmupCosineLR(opt, warmup=2, warmup_start_factor=0, end=4)
    with pytest.raises(ValueError, match='warmup must be an int >= 0'):
        WarmupCosineLR(opt, warmup=-1, end=4)
    with pytest.raises(ValueError, match='by_epoch=True'):
        WarmupCosineLR.build_iter_from_epoch(opt, end=4, by_epoch=False, epoch_length=2)
