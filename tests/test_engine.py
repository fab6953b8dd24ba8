"""Runner-level tests of g2sd.engine with a toy distiller on CPU (a few iterations each)."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import os.path as osp
import pickle
import types
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from torch import nn
from torch.utils.data import Dataset

from g2sd.engine.hooks import SaveStudentHook, TeacherCheckHook
from g2sd.engine.model import PretrainModel
from g2sd.engine.runner import (
    G2SDRunner,
    configure_amp,
    find_resume_checkpoint,
    setup_cpu_distributed,
)
from g2sd.registry import DATASETS, HOOKS, MODELS

DIM = 16


@MODELS.register_module(name='ToyDistillerTestEngine')
class ToyDistiller(nn.Module):
    """Distiller-like toy: linear student regresses a frozen linear teacher kept out of tree."""

    def __init__(self, nan_at: int | None = None, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 4))
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 4)).eval().requires_grad_(False)
        self.__dict__['_teacher'] = teacher  # not a registered sub-module
        self.nan_at, self.fail_at = nan_at, fail_at
        self.calls = 0
        self.dtypes: list[torch.dtype] = []

    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    teacher_checkpoint = 'toy://teacher.pth'

    def export_student(self) -> dict[str, torch.Tensor]:
        return {k.replace('1.', '', 1): v for k, v in self.student.state_dict().items()}

    def forward(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError('simulated crash')
        s = self.student(imgs)
        self.dtypes.append(s.dtype)
        with torch.no_grad():
            t = self._teacher(imgs)
        loss = ((s.float() - t.float()) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float('nan')
        return dict(loss_distill=loss, cos=torch.tensor(0.5))


@DATASETS.register_module(name='ToyImagesTestEngine')
class ToyImages(Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 4, DIM // 4, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=self.x[i], data_samples=i % 2)


@HOOKS.register_module(name='CaptureResumeStateTestEngine')
class CaptureResumeState(Hook):
    """Records iteration and optimiser state as they are when training (re)starts."""

    captured: dict = {}

    def before_train(self, runner) -> None:
        CaptureResumeState.captured = dict(
            iter=runner.iter, optim=copy.deepcopy(runner.optim_wrapper.state_dict())
        )


def make_cfg(work_dir: str, max_iters: int = 4, interval: int = 2, **algo) -> Config:
    return Config(
        dict(
            default_scope='g2sd',
            work_dir=work_dir,
            experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
            model=dict(
                type='g2sd.PretrainModel', algorithm=dict(type='ToyDistillerTestEngine', **algo)
            ),
            train_dataloader=dict(
                dataset=dict(type='ToyImagesTestEngine'),
                sampler=dict(type='InfiniteSampler', shuffle=True),
                batch_size=4,
                num_workers=0,
                collate_fn=dict(type='default_collate'),
            ),
            train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05)),
            param_scheduler=[
                dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)
            ],
            default_hooks=dict(
                checkpoint=dict(type='CheckpointHook', interval=interval, by_epoch=False),
                logger=dict(type='LoggerHook', interval=1),
            ),
            custom_hooks=[
                dict(type='g2sd.TeacherCheckHook', require_teacher=True),
                dict(type='g2sd.SaveStudentHook'),
            ],
            log_processor=dict(by_epoch=False),
            randomness=dict(seed=0),
        )
    )


def run(cfg: Config) -> G2SDRunner:
    runner = G2SDRunner.from_cfg(cfg)
    runner.train()
    return runner


def full_load(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def model_params(runner: G2SDRunner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_toy_run_checkpoints_and_student(tmp_path):
    wd = str(tmp_path / 'wd')
    runner = run(make_cfg(wd))
    assert runner.iter == 4
    for name in ('iter_2.pth', 'iter_4.pth', 'student.pth', 'student.safetensors'):
        assert osp.isfile(osp.join(wd, name)), name
    assert not [f for f in os.listdir(wd) if '.tmp-' in f]
    with open(osp.join(wd, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('iter_4.pth')
    ckpt = full_load(osp.join(wd, 'iter_4.pth'))
    assert sorted(ckpt['state_dict']) == ['algorithm.student.1.bias', 'algorithm.student.1.weight']
    student = torch.load(osp.join(wd, 'student.pth'), weights_only=True)
    assert sorted(student) == ['bias', 'weight']
    torch.testing.assert_close(student['weight'], ckpt['state_dict']['algorithm.student.1.weight'])
    from safetensors.torch import load_file

    st = load_file(osp.join(wd, 'student.safetensors'))
    torch.testing.assert_close(st['bias'], student['bias'])


def test_nan_loss_raises_before_step_and_keeps_checkpoint(tmp_path):
    wd = str(tmp_path / 'wd')
    runner = G2SDRunner.from_cfg(make_cfg(wd, max_iters=6, interval=1, nan_at=3))
    with pytest.raises(FloatingPointError, match=r'iter 3.*loss_distill=nan'):
        runner.train()
    assert sorted(f for f in os.listdir(wd) if f.endswith('.pth')) == ['iter_1.pth', 'iter_2.pth']
    assert find_resume_checkpoint(wd).endswith('iter_2.pth')
    # no optimiser step was taken on the NaN iteration: weights equal the last checkpoint
    ckpt = full_load(osp.join(wd, 'iter_2.pth'))
    for k, v in model_params(runner).items():
        torch.testing.assert_close(v, ckpt['state_dict'][k])
        assert torch.isfinite(v).all()
    # and that checkpoint resumes
    cfg = make_cfg(wd, max_iters=3, interval=1)
    cfg.resume = True
    assert run(cfg).iter == 3


def test_interrupted_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {'n': 0}

    def flaky_save(obj, f, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:  # a write killed half-way: partial bytes, then death
            f.write(b'PK\x03\x04 truncated')
            raise KeyboardInterrupt('killed while saving')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', flaky_save)
    wd = str(tmp_path / 'wd')
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(wd, max_iters=4, interval=1))
    assert sorted(os.listdir(wd)) == sorted(f for f in os.listdir(wd) if not f.startswith('.')), (
        'temporary file left behind'
    )
    assert not osp.exists(osp.join(wd, 'iter_2.pth'))
    with open(osp.join(wd, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('iter_1.pth')
    assert full_load(osp.join(wd, 'iter_1.pth'))['meta']['iter'] == 1


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    ref = run(make_cfg(str(tmp_path / 'ref'), max_iters=4))
    ref_params = model_params(ref)

    wd = str(tmp_path / 'wd')
    with pytest.raises(RuntimeError, match='simulated crash'):
        run(make_cfg(wd, max_iters=4, fail_at=3))
    saved = full_load(osp.join(wd, 'iter_2.pth'))

    cfg = make_cfg(wd, max_iters=4)
    cfg.resume = True
    cfg.custom_hooks.append(dict(type='CaptureResumeStateTestEngine'))
    resumed = run(cfg)
    cap = CaptureResumeState.captured
    assert cap['iter'] == 2 and resumed.iter == 4
    state, saved_state = cap['optim']['state'], saved['optimizer']['state']
    assert sorted(state) == sorted(saved_state) and state
    for pid in state:
        for key in ('step', 'exp_avg', 'exp_avg_sq'):
            torch.testing.assert_close(state[pid][key], saved_state[pid][key])
    assert cap['optim']['param_groups'][0]['lr'] == saved['optimizer']['param_groups'][0]['lr']
    for k, v in model_params(resumed).items():
        torch.testing.assert_close(v, ref_params[k])


def test_checkpoints_are_plain_data_and_load_from_reads_weights_only(tmp_path):
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    wd = str(tmp_path / 'wd')
    run(make_cfg(wd, max_iters=2))
    ckpt = osp.join(wd, 'iter_2.pth')
    # no globals beyond torch's weights_only defaults (message hub stored as plain data)
    loaded = torch.load(ckpt, weights_only=True)
    assert set(loaded) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'rng'}
    hub = loaded['message_hub']['log_scalars']['train/loss']
    assert hub['__history_buffer__'] is True and hub['log_history'].dtype == torch.float64
    assert len(hub['log_history']) == 2
    cfg = make_cfg(wd, max_iters=3)
    cfg.resume = True
    assert run(cfg).iter == 3
    # load_from of a g2sd checkpoint: its weights only
    cfg = make_cfg(str(tmp_path / 'other'), max_iters=1)
    cfg.load_from = ckpt
    assert run(cfg).iter == 1
    # load_from of a file that needs other globals: refused, naming them
    bad = tmp_path / 'bad.pth'
    torch.save(dict(state_dict={}, x=argparse.Namespace(a=1), y=uuid.UUID(int=1)), bad)
    cfg = make_cfg(str(tmp_path / 'third'), max_iters=1)
    cfg.load_from = str(bad)
    with pytest.raises(pickle.UnpicklingError, match=r'uuid\.UUID.*load_from takes plain weights'):
        run(cfg)


def test_load_from_is_strict_and_names_the_keys(tmp_path):
    from g2sd.checkpoint import CheckpointError

    wd = str(tmp_path / 'wd')
    run(make_cfg(wd, max_iters=2))
    sd = torch.load(osp.join(wd, 'iter_2.pth'), weights_only=True)['state_dict']
    # mmengine's own load_from is strict=False: an extra and a missing key would pass silently
    broken = dict(sd)
    broken['algorithm.student.extra'] = torch.zeros(1)
    missing = sorted(broken)[0]
    del broken[missing]
    torch.save({'state_dict': broken}, tmp_path / 'broken.pth')
    cfg = make_cfg(str(tmp_path / 'other'), max_iters=1)
    cfg.load_from = str(tmp_path / 'broken.pth')
    with pytest.raises(CheckpointError) as err:
        run(cfg)
    msg = str(err.value)
    assert 'missing keys (1)' in msg and missing in msg
    assert 'unexpected keys (1)' in msg and 'extra' in msg
    # an integer tensor for a float weight is refused, not cast
    ints = {k: v.long() if k == missing else v for k, v in sd.items()}
    torch.save({'state_dict': ints}, tmp_path / 'ints.pth')
    cfg = make_cfg(str(tmp_path / 'third'), max_iters=1)
    cfg.load_from = str(tmp_path / 'ints.pth')
    with pytest.raises(CheckpointError, match='int64'):
        run(cfg)


def test_resume_refuses_unexpected_globals(tmp_path):
    from g2sd.checkpoint import CheckpointError

    wd = tmp_path / 'wd'
    wd.mkdir()
    bad = wd / 'iter_2.pth'
    torch.save(dict(meta=dict(iter=2, epoch=0), state_dict={}, x=uuid.UUID(int=1)), bad)
    cfg = make_cfg(str(wd), max_iters=3)
    cfg.resume = True
    with pytest.raises(CheckpointError, match=r'uuid\.UUID'):
        run(cfg)


def test_find_resume_checkpoint_fallback(tmp_path, caplog):
    assert find_resume_checkpoint(str(tmp_path)) is None
    for n in (2, 10, 4):
        torch.save({'n': n}, tmp_path / f'iter_{n}.pth')
    (tmp_path / '.iter_12.pth.tmp-1').write_bytes(b'x')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_12.pth'))  # missing file
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    (tmp_path / 'last_checkpoint').write_text('')  # truncated record
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')


def test_truncated_newest_checkpoint_falls_back_with_warning(tmp_path):
    from mmengine.logging import MMLogger

    for n in (2, 4):
        torch.save({'n': n}, tmp_path / f'iter_{n}.pth')
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(data[: len(data) // 2])  # killed mid-write
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    logger = MMLogger.get_instance(f'h2_trunc_{uuid.uuid4().hex[:6]}')
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger.addHandler(Grab())
    found = find_resume_checkpoint(str(tmp_path))  # warns through the current MMLogger
    assert found == str(tmp_path / 'iter_2.pth')
    warned = [r for r in records if 'unreadable' in r]
    assert warned and 'iter_4.pth' in warned[0] and 'iter_2.pth' in warned[0], records
    (tmp_path / 'iter_2.pth').write_bytes(b'PK\x03\x04')
    assert find_resume_checkpoint(str(tmp_path)) is None


def test_amp_on_cpu_autocasts_forward_to_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setenv('G2SD_CPU_BF16', '1')  # as on a CPU with fast bf16, whatever this one has
    cfg = make_cfg(str(tmp_path / 'wd'), max_iters=2)
    assert configure_amp(cfg, enable=True) == 'g2sd.CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    runner = run(cfg)
    assert type(runner.optim_wrapper).__name__ == 'CPUAmpOptimWrapper'
    algo = runner.model.algorithm
    assert algo.dtypes == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in algo.parameters())
    # a GPU recipe's AmpOptimWrapper is adapted on CPU even without --amp
    cfg = make_cfg(str(tmp_path / 'wd2'))
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    assert configure_amp(cfg) == 'g2sd.CPUAmpOptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper
    assert configure_amp(make_cfg(str(tmp_path / 'wd3'))) is None


def test_configure_amp_cuda_branch(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3))))
    assert configure_amp(cfg, enable=True) == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'float16' and cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3), dtype='bfloat16')))
    configure_amp(cfg, enable=True)
    assert cfg.optim_wrapper.dtype == 'bfloat16'


def test_setup_cpu_distributed_sets_wrapper(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    cfg = Config(dict(launcher='pytorch', find_unused_parameters=True))
    assert setup_cpu_distributed(cfg)
    assert cfg.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel',
        device_ids=None,
        broadcast_buffers=False,
        find_unused_parameters=True,
    )
    assert not setup_cpu_distributed(Config(dict(launcher='none')))
    assert not setup_cpu_distributed(Config(dict(launcher='slurm')))


def test_pretrain_model_modes_and_teacher_outside_tree():
    model = PretrainModel(algorithm=dict(type='ToyDistillerTestEngine'))
    x = torch.randn(2, 1, 4, 4)
    assert model.teacher is model.algorithm.teacher
    assert model.teacher_checkpoint == 'toy://teacher.pth'
    assert not any(k.startswith('algorithm._teacher') for k in model.state_dict())
    assert len(list(model.parameters())) == 2
    assert set(model(x, mode='loss')) == {'loss_distill', 'cos'}
    assert model(x, mode='tensor').shape == (2, 4)
    assert model(torch.stack([x, x], 1), mode='tensor').shape == (2, 4)
    assert sorted(model.export_student()) == ['bias', 'weight']
    with pytest.raises(NotImplementedError, match='predict'):
        model(x, mode='predict')
    with pytest.raises(ValueError, match="'bogus'"):
        model(x, mode='bogus')
    loss, log_vars = model.parse_losses(dict(loss_a=torch.tensor(1.0), loss_b=torch.tensor(2.0)))
    assert float(loss) == 3.0 and set(log_vars) == {'loss', 'loss_a', 'loss_b'}
    with pytest.raises(FloatingPointError, match='loss_b=inf'):
        model.parse_losses(dict(loss_a=torch.tensor(1.0), loss_b=torch.tensor(float('inf'))))


def _fake_runner(model: nn.Module, tmp_path=None) -> types.SimpleNamespace:
    import logging

    return types.SimpleNamespace(
        model=model, logger=logging.getLogger('test'), work_dir=str(tmp_path or '.'), iter=0
    )


def test_teacher_check_hook_failures():
    hook = TeacherCheckHook(require_teacher=True)
    model = PretrainModel(algorithm=dict(type='ToyDistillerTestEngine'))
    hook.before_train(_fake_runner(model))  # healthy

    model.teacher[1].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match='frozen'):
        hook.before_train(_fake_runner(model))
    model.teacher.requires_grad_(False).train()
    with pytest.raises(RuntimeError, match='eval mode'):
        hook.before_train(_fake_runner(model))
    model.teacher.eval()
    model.algorithm.extra = model.teacher  # teacher leaks into the module tree
    with pytest.raises(RuntimeError, match='sub-module'):
        hook.before_train(_fake_runner(model))
    del model.algorithm.extra

    hook.before_train(_fake_runner(model))
    with torch.no_grad():
        model.teacher[1].bias.add_(1.0)
    with pytest.raises(RuntimeError, match='changed'):
        hook.after_train(_fake_runner(model))

    no_teacher = PretrainModel(algorithm=nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match='no teacher'):
        hook.before_train(_fake_runner(no_teacher))
    TeacherCheckHook().before_train(_fake_runner(no_teacher))  # plain MAE: fine


def test_save_student_hook_writes_loadable_files(tmp_path):
    model = PretrainModel(algorithm=dict(type='ToyDistillerTestEngine'))
    SaveStudentHook(out='exported/student_final.pth').after_run(_fake_runner(model, tmp_path))
    out = tmp_path / 'exported' / 'student_final.pth'
    sd = torch.load(out, weights_only=True)
    torch.testing.assert_close(sd['weight'], model.algorithm.student[1].weight)
    assert (tmp_path / 'exported' / 'student_final.safetensors').is_file()
    assert not [p for p in (tmp_path / 'exported').iterdir() if '.tmp-' in p.name]
    with pytest.raises(ValueError):
        SaveStudentHook(out='')
