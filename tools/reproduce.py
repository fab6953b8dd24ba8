"""Fashion-MNIST reproduction of the G2SD paper's tables, with seeds, caching and figures.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) at CPU scale, every training step through the project's runner and configs:

1. "generic distillation methods": MAE, D-MAE, TinyMIM and G2SD students (same 48-d student,
   same budget) by k-NN, linear probe and fine-tuning top-1;
2. Table 2 (the paper's main claim): MAE, MAE + SD, G2SD w/o SD, G2SD for every task of
   ``--tasks`` (cls top-1, det box / mask AP, seg mIoU), with a column saying whether each
   ordering step is larger than the seed spread;
3. single-stage vs two-stage: SD only (random init), GD only (GD + plain fine-tuning) and
   GD then SD, at equal total budget;
4. GD ablations (target block k, token set, mask ratio, student decoder depth), one figure each;
5. sequential distillation (TinyMIM's B -> S -> T driver): teacher -> 48-d G2SD student ->
   a 32-d student, vs the same 32-d student distilled directly from the teacher;
6. analyses on seed 0's checkpoints (CKA, attention distance, occlusion), throughput vs
   accuracy, and the training curves (mmengine ``vis_data/scalars.json``).

A run is (config, options, seed); its result is cached in ``<work-dir>/runs/<key>.json``
(``key = sha1(json.dumps([config, sorted(options), seed]))[:16]``, metrics as fractions) next
to its work dir ``<work-dir>/runs/<key>/``. An existing JSON means the run is skipped, so an
interrupted reproduction resumes; the JSON is written atomically only after the run succeeded.
Options starting with ``@`` describe the evaluation (e.g. the probe sizes) and are not passed
to the config. Runs shared between tables (G2SD w/o SD = GD only) are one cached run.

Example::

    python tools/reproduce.py --quick                     # every section, <= ~3 min, 1 seed
    python tools/reproduce.py --seeds 3 --tasks cls det seg   # the README's numbers
        # (estimate on 2 cores: ~70 min; --tasks cls ~30 min; det/seg ~150 / ~80 s a run)
    python tools/reproduce.py --budget pre_epochs=4 det_iters=100   # a bigger budget
    python tools/reproduce.py --seeds 3 --only-report     # rebuild report.md from the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from demo import (  # noqa: E402  (the demos' helpers: one loader, one probe, one runner)
    ARCHS,
    build_encoder,
    features,
    knn_accuracy,
    last_checkpoint,
    load_fmnist,
    run_logged,
)

logger = logging.getLogger('g2sd.reproduce')

TASKS = ('cls', 'det', 'seg')
MAE_TEACHER = 'checkpoints/fmnist_mae_vit-teacher.pth'
CLS_TEACHER = 'checkpoints/fmnist_vit-teacher_cls.pth'
DET_TEACHER = 'checkpoints/fmnist_vitdet-teacher.pth'
SEG_TEACHER = 'checkpoints/fmnist_upernet-teacher.pth'
PRETRAIN = {
    'MAE': 'configs/pretrain/mae_vit-student_fmnist.py',
    'D-MAE': 'configs/pretrain/dmae_vit-student_fmnist.py',
    'TinyMIM': 'configs/pretrain/tinymim_vit-student_fmnist.py',
    'G2SD': 'configs/pretrain/g2sd-gd_vit-student_fmnist.py',
}
CLS_FT = 'configs/cls/g2sd-ft_vit-student_fmnist.py'
CLS_CONFIGS = {
    'MAE': 'configs/cls/mae-ft_vit-student_fmnist.py',
    'MAE + SD': 'configs/cls/mae-sd_vit-student_fmnist.py',
    'G2SD w/o SD': CLS_FT,
    'G2SD': 'configs/cls/g2sd-sd_vit-student_fmnist.py',
}
#: det / seg rows: (config, student init, distilled); 'MAE + SD' is the SD config on the MAE student
DET_CONFIGS = {
    'MAE': ('configs/det/vitdet_mae_fmnist.py', 'MAE', False),
    'MAE + SD': ('configs/det/vitdet_g2sd_fmnist.py', 'MAE', True),
    'G2SD w/o SD': ('configs/det/vitdet_g2sd_nosd_fmnist.py', 'G2SD', False),
    'G2SD': ('configs/det/vitdet_g2sd_fmnist.py', 'G2SD', True),
}
SEG_CONFIGS = {
    'MAE': ('configs/seg/upernet_mae_fmnist.py', 'MAE', False),
    'MAE + SD': ('configs/seg/upernet_g2sd_fmnist.py', 'MAE', True),
    'G2SD w/o SD': ('configs/seg/upernet_g2sd_nosd_fmnist.py', 'G2SD', False),
    'G2SD': ('configs/seg/upernet_g2sd_fmnist.py', 'G2SD', True),
}
#: the 32-d student of the sequential-distillation section (B -> S -> T)
SMALL_ARCH = dict(ARCHS['fmnist-student'], embed_dim=32, num_heads=2)
SMALL_STUDENT = ['model.student.embed_dim=32', 'model.student.num_heads=2']
#: the 48-d G2SD student as the next G2SD teacher (encoder + 32-d decoder of fmnist_vits.py)
STUDENT_AS_TEACHER = [
    'model.teacher.embed_dim=48',
    'model.teacher.depth=4',
    'model.teacher.num_heads=3',
    'model.teacher.decoder_embed_dim=32',
    'model.teacher.decoder_depth=2',
    'model.teacher.decoder_num_heads=2',
    'model.teacher.pixel_head=False',
    'model.target_block=2',
]


@dataclasses.dataclass(frozen=True)
class Scale:
    """Budget of a reproduction (every section uses these sizes)."""

    name: str
    pre_epochs: int
    pre_samples: int
    ft_epochs: int
    ft_samples: int
    batch: int
    test_samples: int
    bank: int
    probe_test: int
    lp_epochs: int
    det_iters: int
    seg_iters: int
    canvases: tuple[int, int]
    ablations: dict[str, tuple]
    analysis_images: int


QUICK = Scale(
    name='quick',
    pre_epochs=2,
    pre_samples=128,
    ft_epochs=2,
    ft_samples=128,
    batch=64,
    test_samples=200,
    bank=500,
    probe_test=200,
    lp_epochs=30,
    det_iters=2,
    seg_iters=2,
    canvases=(16, 8),
    ablations={
        'target_block': (2, 4),
        'token_set': ('all', 'masked'),
        'mask_ratio': (0.5, 0.75),
        'decoder_depth': (1, 2),
    },
    analysis_images=50,
)
FULL = Scale(
    name='full',
    pre_epochs=2,
    pre_samples=5000,
    ft_epochs=3,
    ft_samples=5000,
    batch=128,
    test_samples=5000,
    bank=5000,
    probe_test=5000,
    lp_epochs=100,
    det_iters=40,
    seg_iters=40,
    canvases=(200, 50),
    ablations={
        'target_block': (1, 2, 4),
        'token_set': ('all', 'masked'),
        'mask_ratio': (0.5, 0.75, 0.9),
        'decoder_depth': (1, 2),
    },
    analysis_images=500,
)
#: the configs' defaults of the ablated options (no cfg-option: the run is the shared G2SD one)
ABLATION_DEFAULTS = {'target_block': 2, 'token_set': 'all', 'mask_ratio': 0.75, 'decoder_depth': 2}
ABLATION_OPTION = {
    'target_block': 'model.target_block',
    'token_set': 'model.token_set',
    'mask_ratio': 'model.mask_ratio',
    'decoder_depth': 'model.student.decoder_depth',
}
ABLATION_LABEL = {
    'target_block': 'teacher decoder block k',
    'token_set': 'token set',
    'mask_ratio': 'mask ratio',
    'decoder_depth': 'student decoder depth',
}


# ----------------------------------------------------------------------------- runs and cache


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cached run: a config trained with cfg-options under a seed, then evaluated.

    Attributes:
        config: Config path relative to the repo.
        options: cfg-options; entries starting with ``@`` describe the evaluation only.
        seed: ``randomness.seed``.
        kind: ``'pretrain'`` (k-NN / linear probe of ``student.pth``), ``'cls'``, ``'det'`` or
            ``'seg'`` (the runner's test metrics on the config's test set).
        arch: ViT kwargs of the pre-trained encoder (``'pretrain'`` only).
    """

    config: str
    options: tuple[str, ...]
    seed: int
    kind: str
    arch: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """``sha1(json.dumps([config, sorted(options), seed]))[:16]``."""
        return run_key(self.config, self.options, self.seed)


def run_key(config: str, options: Sequence[str], seed: int) -> str:
    """The cache key of a run (stable across processes and option order).

    Args:
        config: Config path relative to the repo.
        options: cfg-options (and ``@`` evaluation descriptors).
        seed: The run's seed.
    """
    blob = json.dumps([config, sorted(options), int(seed)])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class Cache:
    """The per-run JSON records of ``<root>/runs``.

    Args:
        root: The reproduction's work dir.
    """

    def __init__(self, root: Path) -> None:
        self.runs = root / 'runs'

    def json_path(self, spec: RunSpec) -> Path:
        """``runs/<key>.json``."""
        return self.runs / f'{spec.key}.json'

    def work_dir(self, spec: RunSpec) -> Path:
        """``runs/<key>/`` (the run's mmengine work dir)."""
        return self.runs / spec.key

    def load(self, spec: RunSpec) -> dict | None:
        """The stored record of ``spec``, or None when it has not run."""
        path = self.json_path(spec)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def store(self, spec: RunSpec, metrics: Mapping[str, float], wall_s: float) -> dict:
        """Write the record of a finished run atomically; returns it."""
        record = {
            'key': spec.key,
            'config': spec.config,
            'options': list(spec.options),
            'seed': spec.seed,
            'metrics': {k: float(v) for k, v in metrics.items()},
            'wall_s': float(wall_s),
            'work_dir': os.path.relpath(self.work_dir(spec), REPO),
        }
        self.runs.mkdir(parents=True, exist_ok=True)
        path = self.json_path(spec)
        tmp = path.with_suffix('.json.tmp')
        tmp.write_text(json.dumps(record, indent=2) + '\n')
        os.replace(tmp, path)
        return record


# ------------------------------------------------------------------------- executing a run


def _runner_options(spec: RunSpec) -> list[str]:
    return [o for o in spec.options if not o.startswith('@')] + [f'randomness.seed={spec.seed}']


@contextlib.contextmanager
def _quiet(log: Path):
    """Send stdout / stderr (mmengine's log stream) to ``log`` for the duration."""
    import logging as _logging

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'a') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            yield f
        finally:
            from mmengine.logging import MMLogger

            loggers = [_logging.getLogger(n) for n in list(_logging.Logger.manager.loggerDict)]
            loggers += list(MMLogger._instance_dict.values())
            for lg in loggers:
                for h in list(getattr(lg, 'handlers', [])):
                    if isinstance(h, _logging.StreamHandler) and h.stream is f:
                        lg.removeHandler(h)


def train_in_process(config: str, work_dir: Path, options: Sequence[str], test: bool) -> dict:
    """Train ``config`` with ``tools/train.py``'s config handling in this process.

    One Python process for all runs saves the 4-8 s import of every subprocess. The log goes
    to ``work_dir/run.log``.

    Args:
        config: Config path relative to the repo.
        work_dir: The run's work dir.
        options: cfg-options.
        test: Run the runner's test loop after training and return its metrics.

    Returns:
        The test metrics (empty without ``test``).
    """
    import train as train_tool  # tools/train.py

    from g2sd.engine.runner import G2SDRunner, setup_cpu_distributed

    argv = [str(REPO / config), '--work-dir', str(work_dir), '--cfg-options', *options]
    with _quiet(work_dir / 'run.log'):
        cfg = train_tool.build_config(train_tool.parse_args(argv))
        setup_cpu_distributed(cfg)
        runner = G2SDRunner.from_cfg(cfg)
        runner.train()
        metrics = dict(runner.test()) if test else {}
    return metrics


def _probe_sets(root: str | None, bank: int, test: int) -> tuple:
    key = (root, bank, test)
    if key not in _PROBE_DATA:
        _PROBE_DATA[key] = (*load_fmnist('train', bank, root), *load_fmnist('test', test, root))
    return _PROBE_DATA[key]


_PROBE_DATA: dict[tuple, tuple] = {}


def _linear_probe(train_f, train_y, test_f, test_y, epochs: int, seed: int) -> float:
    """g2sd.analysis.probe.linear_probe_accuracy (the DEMO helper's) when it is there."""
    try:
        from g2sd.analysis.probe import linear_probe_accuracy
    except ImportError:  # pragma: no cover - until g2sd/analysis/probe.py lands
        import torch

        g = torch.Generator().manual_seed(seed)
        w = torch.zeros(train_f.shape[1], int(train_y.max()) + 1, requires_grad=True)
        b = torch.zeros(w.shape[1], requires_grad=True)
        w.data.normal_(0, 0.01, generator=g)
        opt = torch.optim.SGD([w, b], lr=0.5, momentum=0.9)
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(train_f @ w + b, train_y).backward()
            opt.step()
        return ((test_f @ w + b).argmax(1) == test_y).float().mean().item()
    return linear_probe_accuracy(train_f, train_y, test_f, test_y, epochs=epochs, seed=seed)


def probe_metrics(
    arch: Mapping[str, Any], ckpt: Path | None, root: str | None, scale: Scale, seed: int
) -> dict:
    """k-NN (k=20) and linear-probe top-1 (fractions) of an encoder's pooled features."""
    bx, by, tx, ty = _probe_sets(root, scale.bank, scale.probe_test)
    enc = build_encoder(dict(arch), ckpt)
    fb, ft = features(enc, bx), features(enc, tx)
    return {
        'knn': knn_accuracy(fb, by, ft, ty),
        'linear': _linear_probe(fb, by, ft, ty, scale.lp_epochs, seed),
    }


def reference_metrics(ctx: Context, name: str) -> dict | None:
    """Probe of a reference encoder, cached in ``analysis/reference_<name>_<probe>.json``.

    ``'pixels'``: the same probes on the normalised pixels (what representation learning must
    beat); ``'teacher'``: the shipped 96-d MAE teacher's encoder.
    """
    s = ctx.scale
    path = ctx.work / 'analysis' / f'reference_{name}_bank{s.bank}_test{s.probe_test}.json'
    if path.exists():
        return json.loads(path.read_text())
    if ctx.only_report:
        return None
    if name == 'teacher':
        metrics = probe_metrics(ARCHS['fmnist-teacher'], REPO / MAE_TEACHER, ctx.data_root, s, 0)
    else:
        import torch.nn.functional as F

        try:
            from g2sd.analysis.probe import raw_pixel_features
        except ImportError:  # pragma: no cover - until g2sd/analysis/probe.py lands

            def raw_pixel_features(x):
                return F.normalize(x.flatten(1), dim=1)

        bx, by, tx, ty = _probe_sets(ctx.data_root, s.bank, s.probe_test)
        fb, ft = raw_pixel_features(bx), raw_pixel_features(tx)
        metrics = {
            'knn': knn_accuracy(fb, by, ft, ty),
            'linear': _linear_probe(fb, by, ft, ty, s.lp_epochs, 0),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics) + '\n')
    return metrics


def _fraction(kind: str, metrics: Mapping[str, float]) -> dict:
    """Test metrics as fractions in [0, 1] (cls top-1 and seg mIoU come in %)."""
    out = {}
    for k, v in metrics.items():
        try:
            v = float(v)  # numpy scalars from mmseg / mmdet too
        except (TypeError, ValueError):
            continue
        name = k.split('/')[-1]
        percent = (kind == 'cls' and name in ('top1', 'top5')) or (
            kind == 'seg' and name in ('mIoU', 'mAcc', 'aAcc')
        )
        if percent:
            out[name] = v / 100.0
        elif kind == 'det' and name in ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50'):
            out[name] = float(v)
    return out


def execute(spec: RunSpec, work_dir: Path, ctx: Context) -> dict:
    """Train (and evaluate) one run; returns its metrics as fractions."""
    opts = _runner_options(spec)
    if spec.kind == 'pretrain':
        train_in_process(spec.config, work_dir, opts, test=False)
        return probe_metrics(
            dict(spec.arch), work_dir / 'student.pth', ctx.data_root, ctx.scale, spec.seed
        )
    metrics = train_in_process(spec.config, work_dir, opts, test=True)
    out = _fraction(spec.kind, metrics)
    if spec.kind == 'det':  # CocoMetric reports nothing when no box passes the score threshold
        for k in ('bbox_mAP', 'segm_mAP'):
            out.setdefault(k, 0.0)
    if not out:
        raise RuntimeError(
            f'run {spec.key} ({spec.config}) reported none of the expected metrics: '
            f'{sorted(metrics)}; log: {work_dir / "run.log"}'
        )
    return out


# --------------------------------------------------------------------------- the run graph


@dataclasses.dataclass
class Context:
    """Everything the sections share: budget, seeds, folders, cache, run function."""

    work: Path
    scale: Scale
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    data_root: str | None
    cache: Cache
    run_fn: Callable[[RunSpec, Path, Context], dict]
    only_report: bool = False
    executed: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def get(self, spec: RunSpec) -> dict | None:
        """The record of ``spec``: cached, else run now (None with ``--only-report``)."""
        record = self.cache.load(spec)
        if record is not None:
            return record
        if self.only_report:
            self.missing.append(spec.key)
            return None
        wd = self.cache.work_dir(spec)
        logger.info('run %s: %s %s seed %d', spec.key, spec.config, _short(spec), spec.seed)
        t0 = time.time()
        metrics = self.run_fn(spec, wd, self)
        record = self.cache.store(spec, metrics, time.time() - t0)
        self.executed.append(spec.key)
        logger.info('  done in %.0f s: %s', record['wall_s'], _fmt_metrics(record['metrics']))
        return record

    def metrics(self, spec: RunSpec) -> dict | None:
        """``get(spec)['metrics']`` (None when missing)."""
        record = self.get(spec)
        return None if record is None else record['metrics']

    def work_dir(self, spec: RunSpec) -> Path:
        """The run's work dir."""
        return self.cache.work_dir(spec)


def _short(spec: RunSpec) -> str:
    keep = [o for o in spec.options if not o.startswith(('train_', 'val_', 'test_', 'default_'))]
    return ' '.join(o if len(o) < 60 else o[:57] + '...' for o in keep)


def _fmt_metrics(m: Mapping[str, float]) -> str:
    return ', '.join(f'{k} {100 * v:.2f}' for k, v in m.items())


def _data_opts(ctx: Context, loaders: Sequence[str]) -> list[str]:
    if ctx.data_root is None:
        return []
    return [f'{loader}.dataset.root={ctx.data_root}' for loader in loaders]


def pretrain_options(ctx: Context) -> list[str]:
    """Budget cfg-options of a generic-distillation / MAE run."""
    s = ctx.scale
    return [
        f'train_cfg.max_epochs={s.pre_epochs}',
        f'train_dataloader.dataset.num_samples={s.pre_samples}',
        f'train_dataloader.batch_size={s.batch}',
        'default_hooks.checkpoint.interval=1000',
        'default_hooks.logger.interval=10',
        f'@probe=knn20+linear{s.lp_epochs}:bank{s.bank}:test{s.probe_test}',
        *_data_opts(ctx, ['train_dataloader']),
    ]


def cls_options(ctx: Context, epochs: int | None = None) -> list[str]:
    """Budget cfg-options of a fine-tuning / SD classification run."""
    s = ctx.scale
    e = epochs or s.ft_epochs
    return [
        f'train_cfg.max_epochs={e}',
        f'train_cfg.val_interval={e}',
        f'train_dataloader.dataset.num_samples={s.ft_samples}',
        f'train_dataloader.batch_size={s.batch}',
        f'val_dataloader.dataset.num_samples={s.test_samples}',
        f'test_dataloader.dataset.num_samples={s.test_samples}',
        f'default_hooks.checkpoint.interval={e}',
        'default_hooks.logger.interval=10',
        *_data_opts(ctx, ['train_dataloader', 'val_dataloader', 'test_dataloader']),
    ]


def pretrain_spec(
    ctx: Context, method: str, seed: int, extra: Sequence[str] = (), arch: Mapping | None = None
) -> RunSpec:
    """The pre-training run of ``method`` (a key of :data:`PRETRAIN`)."""
    arch = dict(arch or ARCHS['fmnist-student'])
    opts = pretrain_options(ctx) + list(extra)
    if method != 'MAE':
        opts.append(f'model.teacher_checkpoint={REPO / MAE_TEACHER}')
    return RunSpec(PRETRAIN[method], tuple(opts), seed, 'pretrain', tuple(sorted(arch.items())))


def student_ckpt(ctx: Context, spec: RunSpec) -> Path:
    """``student.pth`` of a pre-training run (the run is made first when missing)."""
    ctx.get(spec)
    return ctx.work_dir(spec) / 'student.pth'


def cls_spec(ctx: Context, row: str, init: Path | None, seed: int, epochs: int | None = None):
    """A classification row: ``CLS_CONFIGS[row]`` (or plain fine-tuning) from ``init``."""
    config = CLS_CONFIGS.get(row, CLS_FT)
    opts = cls_options(ctx, epochs)
    if '-sd' in config:
        opts.append(f'model.teacher_checkpoint={REPO / CLS_TEACHER}')
        opts.append(f'model.student.pretrained={init}')
    else:
        opts.append(f'model.pretrained={init}')
    return RunSpec(config, tuple(opts), seed, 'cls')


def canvases(ctx: Context, task: str) -> Path:
    """The det (COCO) / seg (ADE) canvases of this reproduction, made once (seed 0)."""
    n_train, n_val = ctx.scale.canvases
    out = ctx.work / 'data' / f'{task}_{n_train}_{n_val}'
    if (out / 'DONE').exists():
        return out
    tool = 'make_fmnist_coco.py' if task == 'det' else 'make_fmnist_ade.py'
    cmd = [sys.executable, str(REPO / 'tools' / 'dataset' / tool), '--out', str(out)]
    cmd += ['--seed', '0', '--overwrite', '--num-train', str(n_train), '--num-val', str(n_val)]
    if ctx.data_root is not None:
        cmd += ['--root', ctx.data_root]
    run_logged(cmd, ctx.work / 'data' / f'{task}.log')
    (out / 'DONE').write_text('ok\n')
    return out


def _dense_tool(task: str):
    path = REPO / 'tools' / ('demo_det.py' if task == 'det' else 'demo_seg.py')
    spec = importlib.util.spec_from_file_location(f'_repro_demo_{task}', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dense_spec(ctx: Context, task: str, row: str, init: Path, seed: int) -> RunSpec:
    """A det / seg row of Table 2 (length and data via the demos' option helpers)."""
    config, _, distilled = (DET_CONFIGS if task == 'det' else SEG_CONFIGS)[row]
    tool = _dense_tool(task)
    if task == 'det':
        data = canvases(ctx, 'det')
        opts = tool.data_options(data) + tool.length_options(ctx.scale.det_iters)
        teacher = DET_TEACHER
    else:
        data = canvases(ctx, 'seg')
        opts = tool.data_options(config, data) + tool.length_options(config, ctx.scale.seg_iters)
        teacher = SEG_TEACHER
    if distilled:
        opts += [
            f'model.teacher_checkpoint={REPO / teacher}',
            f'model.student.backbone.pretrained={init}',
        ]
    else:
        opts.append(f'model.backbone.pretrained={init}')
    return RunSpec(config, tuple(opts), seed, task)


# ------------------------------------------------------------------------------ the sections


def _report():
    from g2sd.analysis import report

    return report


def _rows(ctx: Context, specs: Mapping[str, Sequence[RunSpec]], rename: Mapping | None = None):
    """label -> per-seed metric dicts (missing runs left out)."""
    out: dict[str, list[dict]] = {}
    for label, per_seed in specs.items():
        ms = [ctx.metrics(s) for s in per_seed]
        ms = [dict(m) for m in ms if m is not None]
        if rename:
            for m in ms:
                for a, b in rename.items():
                    if a in m:
                        m[b] = m[a]
        out[label] = ms
    return out


def _budget(ctx: Context) -> str:
    s = ctx.scale
    return (
        f'seeds {list(ctx.seeds)}; pre-training {s.pre_epochs} epochs x {s.pre_samples} images, '
        f'fine-tuning {s.ft_epochs} epochs x {s.ft_samples} images (batch {s.batch}); k-NN '
        f'(k=20) / linear probe ({s.lp_epochs} epochs) on {s.bank} train / {s.probe_test} test '
        f'features; fine-tuning top-1 on {s.test_samples} test images ({s.name} scale)'
    )


def section_generic(ctx: Context) -> str:
    """Table 'generic distillation methods' (k-NN / linear / fine-tuning top-1)."""
    rows = {}
    for method in PRETRAIN:
        per_seed = []
        for seed in ctx.seeds:
            pre = pretrain_spec(ctx, method, seed)
            pm = ctx.metrics(pre)
            ft_row = 'MAE' if method == 'MAE' else ('G2SD w/o SD' if method == 'G2SD' else '')
            ft = cls_spec(ctx, ft_row, ctx.work_dir(pre) / 'student.pth', seed)
            fm = ctx.metrics(ft) if pm is not None else None
            if pm is None:
                continue
            m = dict(pm)
            if fm is not None:
                m['fine-tune'] = fm['top1']
            per_seed.append(m)
        rows[f'{method} student'] = per_seed
    for label, name in (('raw pixels (reference)', 'pixels'), ('MAE teacher 96-d', 'teacher')):
        ref = reference_metrics(ctx, name)
        rows[label] = [] if ref is None else [ref]
    return _report().table(
        'Generic distillation methods (48-d student, same budget)',
        ['knn', 'linear', 'fine-tune'],
        rows,
        note=f'top-1 (%) on Fashion-MNIST; {_budget(ctx)}. The fine-tuning column is plain '
        'fine-tuning (no SD) of each pre-trained student. Reference rows (one evaluation, no '
        'seeds): the same probes on the normalised pixels, and on the MAE teacher.',
    )


def table2_specs(ctx: Context, task: str) -> dict[str, list[RunSpec]]:
    """Table 2 rows of ``task`` -> per-seed specs."""
    rows: dict[str, list[RunSpec]] = {r: [] for r in CLS_CONFIGS}
    for seed in ctx.seeds:
        init = {m: student_ckpt(ctx, pretrain_spec(ctx, m, seed)) for m in ('MAE', 'G2SD')}
        for row in rows:
            if task == 'cls':
                rows[row].append(cls_spec(ctx, row, init[row.split()[0]], seed))
            else:
                rows[row].append(dense_spec(ctx, task, row, init[row.split()[0]], seed))
    return rows


def section_table2(ctx: Context) -> str:
    """Table 2: MAE, MAE + SD, G2SD w/o SD, G2SD per task, with the step-vs-spread column."""
    parts = []
    metrics = {'cls': ['top1'], 'det': ['bbox_mAP', 'segm_mAP'], 'seg': ['mIoU']}
    budget = {
        'cls': f'fine-tuning {ctx.scale.ft_epochs} epochs x {ctx.scale.ft_samples} images, '
        f'top-1 on {ctx.scale.test_samples} test images',
        'det': f'ViTDet Mask R-CNN {ctx.scale.det_iters} iterations on {ctx.scale.canvases[0]} '
        f'canvases, COCO box / mask AP on {ctx.scale.canvases[1]} val canvases',
        'seg': f'UperNet {ctx.scale.seg_iters} iterations on {ctx.scale.canvases[0]} canvases, '
        f'mIoU on {ctx.scale.canvases[1]} val canvases',
    }
    for task in ctx.tasks:
        rows = _rows(ctx, table2_specs(ctx, task))
        parts.append(
            _report().table(
                f'Table 2 ({task}): MAE / MAE + SD / G2SD w/o SD / G2SD',
                metrics[task],
                rows,
                ordering=metrics[task][0],
                note=f'seeds {list(ctx.seeds)}; students pre-trained {ctx.scale.pre_epochs} '
                f'epochs x {ctx.scale.pre_samples} images (same seed); {budget[task]}.',
            )
        )
    return '\n\n'.join(parts)


def section_stages(ctx: Context) -> str:
    """Single-stage vs two-stage at equal total budget (classification)."""
    s = ctx.scale
    rows: dict[str, list[RunSpec]] = {'SD only': [], 'GD only': [], 'GD then SD': []}
    for seed in ctx.seeds:
        g2sd = student_ckpt(ctx, pretrain_spec(ctx, 'G2SD', seed))
        rows['SD only'].append(cls_spec(ctx, 'G2SD', None, seed, s.pre_epochs + s.ft_epochs))
        rows['GD only'].append(cls_spec(ctx, 'G2SD w/o SD', g2sd, seed))
        rows['GD then SD'].append(cls_spec(ctx, 'G2SD', g2sd, seed))
    note = (
        f'top-1 (%); seeds {list(ctx.seeds)}. Equal budget: SD only = SD from random init for '
        f'{s.pre_epochs + s.ft_epochs} epochs; GD only = GD {s.pre_epochs} epochs + plain '
        f'fine-tuning {s.ft_epochs} epochs (the "G2SD w/o SD" run); GD then SD = GD '
        f'{s.pre_epochs} + SD {s.ft_epochs} epochs (the "G2SD" run); {s.ft_samples} images per '
        f'fine-tuning epoch, {s.pre_samples} per GD epoch.'
    )
    return _report().table(
        'Single-stage vs two-stage distillation',
        ['top1'],
        _rows(ctx, rows),
        ordering='top1',
        note=note,
    )


def section_ablations(ctx: Context, figdir: Path) -> str:
    """GD ablations, one figure (k-NN and linear probe) and one table each."""
    parts = []
    for name, values in ctx.scale.ablations.items():
        rows: dict[str, list[dict]] = {}
        for v in values:
            extra = [] if v == ABLATION_DEFAULTS[name] else [f'{ABLATION_OPTION[name]}={v}']
            specs = [pretrain_spec(ctx, 'G2SD', seed, extra) for seed in ctx.seeds]
            rows[str(v)] = _rows(ctx, {str(v): specs})[str(v)]
        png = figdir / f'ablation_{name}.png'
        if all(rows[str(v)] for v in values):
            _report().ablation_figure(
                f'GD: {ABLATION_LABEL[name]}',
                ABLATION_LABEL[name],
                {v: [m['knn'] * 100 for m in rows[str(v)]] for v in values},
                'k-NN top-1 (%)',
                png,
            )
        parts.append(
            _report().table(
                f'GD ablation: {ABLATION_LABEL[name]} (default {ABLATION_DEFAULTS[name]})',
                ['knn', 'linear'],
                {f'{ABLATION_LABEL[name]} = {v}': rows[str(v)] for v in values},
                note=f'{_budget(ctx)}; option `{ABLATION_OPTION[name]}`.',
            )
            + f'\n\n![{name}]({os.path.relpath(png, ctx.work)})'
        )
    return '\n\n'.join(parts)


def sequential_specs(ctx: Context, seed: int) -> dict[str, RunSpec]:
    """B -> S -> T: the 48-d G2SD student as the teacher of a 32-d one, and the direct run."""
    first = pretrain_spec(ctx, 'G2SD', seed)
    ctx.get(first)
    ckpt = (
        last_checkpoint(ctx.work_dir(first))
        if (ctx.work_dir(first) / 'last_checkpoint').exists()
        else ctx.work_dir(first) / f'epoch_{ctx.scale.pre_epochs}.pth'
    )
    via = pretrain_spec(ctx, 'G2SD', seed, SMALL_STUDENT, SMALL_ARCH)
    opts = [o for o in via.options if not o.startswith('model.teacher_checkpoint=')]
    opts += STUDENT_AS_TEACHER + [f'model.teacher_checkpoint={ckpt}']
    return {
        'teacher -> 32-d (direct)': pretrain_spec(ctx, 'G2SD', seed, SMALL_STUDENT, SMALL_ARCH),
        'teacher -> 48-d -> 32-d (sequential)': dataclasses.replace(via, options=tuple(opts)),
        '48-d student (the intermediate teacher)': first,
    }


def section_sequential(ctx: Context) -> str:
    """Sequential distillation table (k-NN / linear probe)."""
    rows: dict[str, list[RunSpec]] = {}
    for seed in ctx.seeds:
        for label, spec in sequential_specs(ctx, seed).items():
            rows.setdefault(label, []).append(spec)
    return _report().table(
        'Sequential distillation (TinyMIM B -> S -> T driver, G2SD GD at every step)',
        ['knn', 'linear'],
        _rows(ctx, rows),
        note=f'{_budget(ctx)}. 32-d student: embed_dim 32, depth 4, 2 heads; the 48-d G2SD '
        "student's whole MAE (encoder + decoder, epoch checkpoint) is the second teacher "
        '(target block 2 of its 2 decoder blocks).',
    )


def _load_cli(name: str):
    path = REPO / 'tools' / 'analysis' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'_repro_analysis_{name}', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _analysis(ctx: Context, name: str, argv: list[str]) -> str | None:
    """Run ``tools/analysis/<name>.py`` in-process once; the PNG's path relative to the report.

    Outputs are ``analysis/<name>_<sha1(argv)[:8]>.{png,json}``: the same inputs (checkpoints,
    i.e. run keys, and sizes) reuse them, other inputs get their own. None when not made
    (``--only-report``).
    """
    stem = f'{name}_{hashlib.sha1(json.dumps(argv).encode()).hexdigest()[:8]}'
    adir = ctx.work / 'analysis'
    if not (adir / f'{stem}.json').exists():
        if ctx.only_report:
            return None
        with _quiet(adir / f'{stem}.log'):
            _load_cli(name).main([*argv, '--out-dir', str(adir), '--name', stem])
    if not (adir / f'{stem}.png').exists():
        return None
    return f'analysis/{stem}.png'


def section_analyses(ctx: Context, figdir: Path) -> str:
    """CKA, attention distance and occlusion on seed 0's checkpoints."""
    seed = ctx.seeds[0]
    n = ctx.scale.analysis_images
    data = [] if ctx.data_root is None else ['--data-root', ctx.data_root]
    pre = {m: pretrain_spec(ctx, m, seed) for m in PRETRAIN}
    if any(ctx.cache.load(s) is None for s in pre.values()):
        return '### Analyses\n\n(missing pre-training runs; rerun without --only-report)'
    ck = {m: ctx.work_dir(s) / 'student.pth' for m, s in pre.items()}
    parts = ['### Analyses', f'On seed {seed} checkpoints, {n} test images.']
    sizes = ['--num-images', str(n), *data]
    png = _analysis(ctx, 'cka', ['--student-ckpt', str(ck['G2SD']), *sizes, '--device', 'cpu'])
    if png:
        parts.append(f'Linear CKA, G2SD student blocks vs teacher blocks:\n\n![cka]({png})')
    models = ['random=random'] + [f'{m}={ck[m]}' for m in ('MAE', 'D-MAE', 'G2SD')]
    png = _analysis(
        ctx, 'attention_distance', [*(a for m in models for a in ('--model', m)), *sizes]
    )
    if png:
        parts.append(
            'Mean attention distance per layer (random / MAE / D-MAE / G2SD students):\n\n'
            f'![attention distance]({png})'
        )
    if 'cls' in ctx.tasks:
        specs = table2_specs(ctx, 'cls')
        mdl = []
        for row in ('MAE + SD', 'G2SD'):
            spec = specs[row][0]
            if ctx.cache.load(spec) is None:
                continue
            ckpt = last_checkpoint(ctx.work_dir(spec))
            mdl += ['--model', f'{row.replace(" ", "")}={REPO / spec.config}:{ckpt}']
        png = _analysis(ctx, 'occlusion', [*mdl, *sizes]) if mdl else None
        if png:
            parts.append(
                'Occlusion robustness (top-1 vs fraction of patches dropped / zeroed), '
                f'MAE + SD vs G2SD classifiers:\n\n![occlusion]({png})'
            )
    return '\n\n'.join(parts)


def images_per_second(arch: Mapping[str, Any], n: int = 256, repeats: int = 3) -> float:
    """Encoder throughput (images / s) of a small timed forward, batch ``n``, best of repeats."""
    import torch

    enc = build_encoder(dict(arch), None).eval()
    x = torch.randn(n, int(arch.get('in_chans', 1)), arch['img_size'], arch['img_size'])
    best = float('inf')
    with torch.no_grad():
        enc(x[:8])
        for _ in range(repeats):
            t0 = time.perf_counter()
            enc(x)
            best = min(best, time.perf_counter() - t0)
    return n / best


def section_throughput(ctx: Context, figdir: Path) -> str:
    """Throughput vs k-NN accuracy: students vs the teacher."""
    import statistics

    points = []
    for label, specs, arch in (
        ('G2SD 48-d', [pretrain_spec(ctx, 'G2SD', s) for s in ctx.seeds], ARCHS['fmnist-student']),
        ('MAE 48-d', [pretrain_spec(ctx, 'MAE', s) for s in ctx.seeds], ARCHS['fmnist-student']),
        (
            'G2SD 32-d (sequential)',
            [sequential_specs(ctx, s)['teacher -> 48-d -> 32-d (sequential)'] for s in ctx.seeds],
            SMALL_ARCH,
        ),
    ):
        accs = [r['metrics']['knn'] * 100 for r in map(ctx.cache.load, specs) if r is not None]
        if accs:
            points.append(
                dict(
                    name=label,
                    throughput=images_per_second(arch),
                    accuracy=statistics.fmean(accs),
                    accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                )
            )
    teacher = reference_metrics(ctx, 'teacher')
    if teacher is not None:
        points.append(
            dict(
                name='MAE teacher 96-d',
                throughput=images_per_second(ARCHS['fmnist-teacher']),
                accuracy=teacher['knn'] * 100,
            )
        )
    png = figdir / 'throughput_accuracy.png'
    if points:
        _report().throughput_accuracy_figure(points, png, ylabel='k-NN top-1 (%)')
    lines = ['### Throughput vs accuracy', '', '| encoder | images / s | k-NN top-1 (%) |']
    lines.append('|---|---|---|')
    lines += [f'| {p["name"]} | {p["throughput"]:.0f} | {p["accuracy"]:.2f} |' for p in points]
    lines.append('')
    lines.append(
        'Throughput: a timed forward of batch 256 on this CPU (best of 3); accuracy: k-NN mean '
        f'over seeds {list(ctx.seeds)}.'
    )
    lines.append(f'\n![throughput]({os.path.relpath(png, ctx.work)})')
    return '\n'.join(lines)


def section_curves(ctx: Context, figdir: Path) -> str:
    """Training-loss curves of seed 0's pre-training runs (mmengine scalars.json)."""
    seed = ctx.seeds[0]
    runs = {m: ctx.work_dir(pretrain_spec(ctx, m, seed)) for m in PRETRAIN}
    runs = {m: wd for m, wd in runs.items() if wd.exists()}
    png = figdir / 'curves_pretrain.png'
    if not runs:
        return '### Training curves\n\n(no pre-training runs yet)'
    try:
        _report().curves_figure(runs, png, key='loss', title=f'pre-training loss (seed {seed})')
    except ValueError as e:  # no run logged a loss (e.g. runs copied without their logs)
        return f'### Training curves\n\n({e})'
    return (
        "### Training curves\n\nFrom each run's `vis_data/scalars.json` (LocalVisBackend); "
        f'seed {seed}.\n\n![curves]({os.path.relpath(png, ctx.work)})'
    )


SECTIONS = (
    ('generic', lambda ctx, fig: section_generic(ctx)),
    ('table2', lambda ctx, fig: section_table2(ctx)),
    ('stages', lambda ctx, fig: section_stages(ctx)),
    ('ablations', section_ablations),
    ('sequential', lambda ctx, fig: section_sequential(ctx)),
    ('analyses', section_analyses),
    ('throughput', section_throughput),
    ('curves', section_curves),
)


def reproduce(ctx: Context) -> Path:
    """Run (or read) every section and write ``report.md``; returns its path."""
    figdir = ctx.work / 'figures'
    figdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    parts = [
        '# G2SD reproduction on Fashion-MNIST',
        f'Scale: {ctx.scale.name}; seeds {list(ctx.seeds)}; tasks {list(ctx.tasks)}. '
        'Mean ± sample std over seeds from the per-seed JSON in `runs/`; numbers in %.',
    ]
    for name, fn in SECTIONS:
        logger.info('section %s', name)
        parts.append(fn(ctx, figdir))
    parts.append(
        f'\n_{len(ctx.executed)} runs executed this time, wall {time.time() - t0:.0f} s; '
        f'{len(ctx.missing)} missing._'
    )
    report = ctx.work / 'report.md'
    report.write_text('\n\n'.join(parts) + '\n')
    return report


BUDGET_FIELDS = tuple(
    f.name for f in dataclasses.fields(Scale) if f.name not in ('name', 'ablations')
)


def apply_budget(scale: Scale, items: Sequence[str]) -> Scale:
    """``scale`` with ``FIELD=INT`` overrides (``canvases=TRAIN,VAL``); renamed if changed.

    Raises:
        ValueError: An item is not ``FIELD=INT`` or names an unknown field.
    """
    changes: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition('=')
        if not sep or field not in BUDGET_FIELDS:
            raise ValueError(f'--budget {item!r}: expected FIELD=INT with FIELD in {BUDGET_FIELDS}')
        try:
            parsed = tuple(int(v) for v in value.split(','))
        except ValueError:
            raise ValueError(f'--budget {item!r}: {value!r} is not an integer') from None
        if len(parsed) != (2 if field == 'canvases' else 1) or min(parsed) < 1:
            raise ValueError(f'--budget {item!r}: expected positive integer(s)')
        changes[field] = parsed if field == 'canvases' else parsed[0]
    if not changes:
        return scale
    return dataclasses.replace(scale, name=f'{scale.name} + {" ".join(items)}', **changes)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--tasks',
        nargs='+',
        choices=TASKS,
        default=None,
        help='tasks of Table 2 (default: cls det seg; with --quick: cls, CI-sized)',
    )
    parser.add_argument('--seeds', type=int, default=None, help='seeds 0..S-1 (quick: 1, full: 3)')
    parser.add_argument('--quick', action='store_true', help='CI-sized budget (every section)')
    parser.add_argument('--work-dir', default='work_dirs/reproduce', help='report + runs folder')
    parser.add_argument(
        '--data-root', default=None, help='folder of Fashion-MNIST-layout idx files (any size)'
    )
    parser.add_argument(
        '--only-report', action='store_true', help='rebuild report.md from the cached JSON'
    )
    parser.add_argument(
        '--budget',
        nargs='+',
        default=[],
        metavar='FIELD=INT',
        help='override budget fields of the scale (e.g. pre_epochs=3 det_iters=100 '
        f'canvases=500,100); fields: {", ".join(BUDGET_FIELDS)}',
    )
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f'--seeds must be >= 1, got {args.seeds}')
    return args


def main(argv: Sequence[str] | None = None, run_fn: Callable | None = None) -> int:
    """Entry point (``run_fn`` replaces :func:`execute`, for tests)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    logging.getLogger('g2sd.checkpoint').setLevel(logging.WARNING)  # one line per load
    try:
        scale = apply_budget(QUICK if args.quick else FULL, args.budget)
    except ValueError as e:
        raise SystemExit(f'reproduce.py: error: {e}') from None
    seeds = args.seeds or (1 if args.quick else 3)
    work = Path(args.work_dir)
    work = (work if work.is_absolute() else REPO / work).resolve()
    root = None if args.data_root is None else str(Path(args.data_root).resolve())
    ctx = Context(
        work=work,
        scale=scale,
        seeds=tuple(range(seeds)),
        tasks=tuple(dict.fromkeys(args.tasks or (['cls'] if args.quick else list(TASKS)))),
        data_root=root,
        cache=Cache(work),
        run_fn=run_fn or execute,
        only_report=args.only_report,
    )
    t0 = time.time()
    report = reproduce(ctx)
    sys.stdout.write(
        f'report: {os.path.relpath(report, REPO)} ({len(ctx.executed)} runs executed, '
        f'{len(ctx.missing)} missing, {time.time() - t0:.0f} s)\n'
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
