"""tools/train.py end to end: --help, a 2-iteration CPU run, resume, and 2-process gloo DDP."""

from __future__ import annotations

import importlib.util
import os
import os.path as osp
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / 'tools' / 'train.py'

TOY_MODULE = '''
"""Toy distiller / data / hook for the tools/train.py tests (imported via custom_imports)."""
import os
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from torch import nn
from torch.utils.data import Dataset

from g2sd.registry import DATASETS, HOOKS, MODELS


@MODELS.register_module(name='ToyDistillerTrainTool')
class ToyDistiller(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        torch.manual_seed(0)
        # SyncBN: must be reverted to BN on CPU (gloo DDP refuses SyncBN)
        self.student = nn.Sequential(nn.Flatten(), nn.Linear(dim, 4), nn.SyncBatchNorm(4))
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(dim, 4)).eval().requires_grad_(False)
        self.__dict__['_teacher'] = teacher
        self.dtypes = []

    @property
    def teacher(self):
        return self._teacher

    teacher_checkpoint = None

    def export_student(self):
        return self.student.state_dict()

    def forward(self, imgs):
        s = self.student(imgs)
        self.dtypes.append(str(s.dtype))
        with torch.no_grad():
            t = self._teacher(imgs)
        return dict(loss_distill=((s.float() - t.float()) ** 2).mean())


@DATASETS.register_module(name='ToyImagesTrainTool')
class ToyImages(Dataset):
    def __init__(self, n=16, dim=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 4, dim // 4, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=i % 2)


@HOOKS.register_module(name='DumpStateTrainTool')
class DumpState(Hook):
    def after_run(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save(
            dict(
                params={k: v.detach().cpu() for k, v in model.state_dict().items()},
                wrapper=type(runner.model).__name__,
                optim=type(runner.optim_wrapper).__name__,
                dtypes=model.algorithm.dtypes,
                norm=type(model.algorithm.student[2]).__name__,
                iter=runner.iter,
            ),
            os.path.join(runner.work_dir, f'state_rank{get_rank()}.pt'),
        )
'''

TOY_CONFIG = """
custom_imports = dict(imports=['toy_train_tool_module'], allow_failed_imports=False)
default_scope = 'g2sd'
model = dict(type='g2sd.PretrainModel', algorithm=dict(type='ToyDistillerTrainTool'))
train_dataloader = dict(
    dataset=dict(type='ToyImagesTrainTool'),
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_size=2,
    num_workers=0,
    collate_fn=dict(type='default_collate'),
)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=100)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
auto_scale_lr = dict(enable=False, base_batch_size=4)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1),
)
custom_hooks = [
    dict(type='g2sd.TeacherCheckHook', require_teacher=True),
    dict(type='g2sd.SaveStudentHook'),
    dict(type='DumpStateTrainTool'),
]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
"""


@pytest.fixture()
def toy(tmp_path):
    (tmp_path / 'toy_train_tool_module.py').write_text(TOY_MODULE)
    cfg = tmp_path / 'toy_pretrain.py'
    cfg.write_text(textwrap.dedent(TOY_CONFIG))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), env.get('PYTHONPATH', '')]).rstrip(
        os.pathsep
    )  # only for the toy module of this test
    env['OMP_NUM_THREADS'] = '1'
    env.pop('LOCAL_RANK', None)
    return tmp_path, cfg, env


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}'
    return proc


def _state(work_dir: Path, rank: int = 0) -> dict:
    return torch.load(work_dir / f'state_rank{rank}.pt', weights_only=True)


def test_help():
    proc = subprocess.run(
        [sys.executable, str(TRAIN), '--help'], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for flag in (
        '--work-dir',
        '--amp',
        '--auto-scale-lr',
        '--resume',
        '--cfg-options',
        '--launcher',
        '--local_rank',
    ):
        assert flag in proc.stdout


def test_two_iterations_then_resume(toy):
    tmp_path, cfg, env = toy
    env = dict(env, G2SD_CPU_BF16='1')  # --amp as on a CPU with fast bf16, whatever this one has
    cmd = [
        sys.executable,
        str(TRAIN),
        str(cfg),
        '--amp',
        '--auto-scale-lr',
        '--cfg-options',
        'train_cfg.max_iters=2',
    ]
    _run(cmd, cwd=tmp_path, env=env)
    wd = tmp_path / 'work_dirs' / 'toy_pretrain'  # default work dir: ./work_dirs/<config stem>
    for name in (
        'iter_1.pth',
        'iter_2.pth',
        'last_checkpoint',
        'student.pth',
        'student.safetensors',
    ):
        assert (wd / name).is_file(), name
    st = _state(wd)
    assert st['iter'] == 2 and st['wrapper'] == 'PretrainModel'
    if not torch.cuda.is_available():
        assert st['optim'] == 'CPUAmpOptimWrapper'
        assert st['dtypes'] == ['torch.bfloat16'] * 2
    assert not any(k.startswith('algorithm._teacher') for k in st['params'])

    cmd = [
        sys.executable,
        str(TRAIN),
        str(cfg),
        '--resume',
        '--work-dir',
        str(wd),
        '--cfg-options',
        'train_cfg.max_iters=3',
    ]
    proc = _run(cmd, cwd=tmp_path, env=env)
    assert 'resumed epoch: 0, iter: 2' in proc.stdout + proc.stderr
    assert _state(wd)['iter'] == 3 and (wd / 'iter_3.pth').is_file()


def _load_tool():
    spec = importlib.util.spec_from_file_location('g2sd_train_tool', TRAIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_config_applies_cli_options(toy, monkeypatch):
    tmp_path, cfg, _ = toy
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it when absent
    tool = _load_tool()
    c = tool.build_config(
        tool.parse_args(
            [
                str(cfg),
                '--resume',
                'a/iter_4.pth',
                '--cfg-options',
                'train_cfg.max_iters=7',
                'optim_wrapper.optimizer.lr=0.5',
            ]
        )
    )
    assert c.work_dir == osp.join('./work_dirs', 'toy_pretrain')
    assert c.resume is True and c.load_from == 'a/iter_4.pth'
    assert c.train_cfg.max_iters == 7 and c.optim_wrapper.optimizer.lr == 0.5
    assert c.launcher == 'none' and c.auto_scale_lr.enable is False
    c = tool.build_config(
        tool.parse_args([str(cfg), '--resume', '--auto-scale-lr', '--work-dir', 'elsewhere'])
    )
    assert c.resume is True and c.load_from is None and c.work_dir == 'elsewhere'
    assert c.auto_scale_lr.enable is True
    with pytest.raises(ValueError, match='auto_scale_lr'):
        tool.build_config(
            tool.parse_args([str(cfg), '--auto-scale-lr', '--cfg-options', 'auto_scale_lr=None'])
        )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='exercises the CPU gloo path')
def test_ddp_two_processes_gloo_cpu(toy):
    tmp_path, cfg, env = toy
    wd = tmp_path / 'ddp'
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node',
        '2',
        str(TRAIN),
        str(cfg),
        '--launcher',
        'pytorch',
        '--work-dir',
        str(wd),
        '--cfg-options',
        'train_cfg.max_iters=2',
    ]
    _run(cmd, cwd=REPO, env=env, timeout=180)
    s0, s1 = _state(wd, 0), _state(wd, 1)
    assert s0['wrapper'] == s1['wrapper'] == 'MMDistributedDataParallel'
    assert s0['norm'] == '_BatchNormXd'  # SyncBN reverted on CPU
    assert s0['iter'] == s1['iter'] == 2
    # gradients were all-reduced: the weights of both replicas are identical (BN running stats
    # are per rank with broadcast_buffers=False)
    weights = [k for k in s0['params'] if not k.split('.')[-1].startswith(('running_', 'num_'))]
    assert len(weights) == 4
    for k in weights:
        torch.testing.assert_close(s0['params'][k], s1['params'][k])
    assert not torch.equal(
        s0['params']['algorithm.student.2.running_mean'],
        s1['params']['algorithm.student.2.running_mean'],
    )  # ranks saw other data
    assert (wd / 'iter_2.pth').is_file() and (wd / 'student.pth').is_file()


@pytest.mark.parametrize(
    ('option', 'hint'),
    [
        ('resum=True', "did you mean 'resume'"),
        ('load_form=x.pth', "did you mean 'load_from'"),
        ('auto_scale_lr.enabel=True', "did you mean 'auto_scale_lr.enable'"),
        ('env_cfg.cudnn_benchmrk=True', "did you mean 'env_cfg.cudnn_benchmark'"),
        (
            'default_hooks.checkpoint.intervall=1',
            "did you mean 'default_hooks.checkpoint.interval'",
        ),
        ('train_cfg.max_iter=3', "did you mean 'train_cfg.max_iters'"),
        ('custom_hooks.7.out=a', 'not an index'),
    ],
)
def test_unknown_cfg_option_refused_with_closest_name(toy, monkeypatch, option, hint):
    tmp_path, cfg, _ = toy
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('LOCAL_RANK', '0')
    tool = _load_tool()
    with pytest.raises(ValueError, match=hint):
        tool.build_config(tool.parse_args([str(cfg), '--cfg-options', option]))


def test_user_error_is_one_line_without_traceback(toy):
    tmp_path, cfg, env = toy
    cmd = [sys.executable, str(TRAIN), str(cfg), '--cfg-options', 'resum=True']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "train.py: error: ValueError: --cfg-options resum: 'resum' is not in the config; did "
        "you mean 'resume'? (to add a new key on purpose write '+resum')"
    )
    # the traceback on request
    env = dict(env, G2SD_TRACEBACK='1')
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and 'Traceback' in proc.stderr


def test_valid_absent_and_explicit_new_cfg_options(toy, monkeypatch):
    tmp_path, cfg, _ = toy
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('LOCAL_RANK', '0')
    tool = _load_tool()
    c = tool.build_config(
        tool.parse_args(
            [
                str(cfg),
                '--cfg-options',
                'resume_hparams=config',  # runner setting absent from the config
                'default_hooks.checkpoint.max_keep_ckpts=2',  # CheckpointHook argument
                'env_cfg.cudnn_benchmark=True',  # known env_cfg field
                'train_dataloader.pin_memory=True',  # DataLoader argument
                '+model.algorithm.extra=1',  # explicit new key
            ]
        )
    )
    assert c.resume_hparams == 'config' and c.default_hooks.checkpoint.max_keep_ckpts == 2
    assert c.env_cfg.cudnn_benchmark is True and c.train_dataloader.pin_memory is True
    assert c.model.algorithm.extra == 1


def test_runner_refuses_zero_length_and_bad_hook_args(toy, monkeypatch):
    tmp_path, cfg, _ = toy
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('LOCAL_RANK', '0')
    tool = _load_tool()
    from g2sd.engine.runner import G2SDRunner

    for opt in ('train_cfg.max_iters=0', 'train_cfg.max_iters=-2'):
        c = tool.build_config(tool.parse_args([str(cfg), '--cfg-options', opt]))
        c.work_dir = str(tmp_path / 'wd')
        with pytest.raises(ValueError, match='train_cfg.max_iters must be a positive integer'):
            G2SDRunner.from_cfg(c)
    # a typo'd CheckpointHook argument written in the config itself: refused at build time
    c = tool.build_config(tool.parse_args([str(cfg)]))
    c.work_dir = str(tmp_path / 'wd2')
    c.default_hooks.checkpoint['intervall'] = 1
    with pytest.raises(ValueError, match=r"CheckpointHook has no argument 'intervall'.*'interval'"):
        G2SDRunner.from_cfg(c)
    c.default_hooks.checkpoint.pop('intervall')
    c.resume_hparams = 'cfg'
    with pytest.raises(ValueError, match="resume_hparams must be one of .* got 'cfg'"):
        G2SDRunner.from_cfg(c)


GENERIC_METRIC = '''
from mmengine.evaluator import BaseMetric
from g2sd.registry import METRICS


@METRICS.register_module(name='CountSamplesTestTool')
class CountSamples(BaseMetric):
    """A non-classification metric: how many predictions reached it."""

    def process(self, data_batch, data_samples):
        self.results.append(len(data_samples))

    def compute_metrics(self, results):
        return dict(count=sum(results), batches=len(results))
'''

GENERIC_TEST_CONFIG = """
default_scope = 'g2sd'
custom_imports = dict(imports=['g2sd.engine', 'g2sd.cls', 'toy_generic_metric'])
model = dict(
    type='g2sd.ViTClassifier',
    backbone=dict(type='g2sd.DistilledVisionTransformer', img_size=16, patch_size=8,
                  embed_dim=16, depth=1, num_heads=2, num_classes=3),
    data_preprocessor=dict(type='g2sd.ClsDataPreprocessor', num_classes=3),
)
test_dataloader = dict(
    batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='g2sd.ImageFolder', root='{root}',
                 pipeline=[dict(type='Resize', size=16), dict(type='ToTensor')]))
test_evaluator = dict(type='CountSamplesTestTool')
test_cfg = dict(type='TestLoop')
"""


def test_test_tool_generic_evaluator_path(tmp_path):
    from PIL import Image

    root = tmp_path / 'val'
    for c in ('a', 'b', 'c'):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new('RGB', (20, 20), color=(40 * i, 80, 120)).save(root / c / f'{i}.png')
    (tmp_path / 'toy_generic_metric.py').write_text(GENERIC_METRIC)
    cfg = tmp_path / 'generic.py'
    cfg.write_text(GENERIC_TEST_CONFIG.format(root=root))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(tmp_path))
    env.pop('LOCAL_RANK', None)
    from g2sd.cls import ViTClassifier
    from g2sd.cls.vit import DistilledVisionTransformer

    clf = ViTClassifier(
        backbone=DistilledVisionTransformer(
            img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3
        )
    )
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': clf.state_dict()}, ckpt)
    test_tool = REPO / 'tools' / 'test.py'
    out = tmp_path / 'res.json'
    cmd = [sys.executable, str(test_tool), str(cfg), str(ckpt), '--work-dir', str(tmp_path / 'wd')]
    proc = _run([*cmd, '--out', str(out)], cwd=tmp_path, env=env)
    import json

    assert json.loads(out.read_text()) == {'test': {'count': 6, 'batches': 2}}
    assert 'test: count=6  batches=2' in proc.stdout
    bad = subprocess.run(
        [*cmd, '--imagenet-a', str(root)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0 and 'for classification configs' in bad.stderr
