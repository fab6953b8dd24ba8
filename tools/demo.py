"""End-to-end G2SD demo on real images (Fashion-MNIST), on CPU in a few minutes.

Steps, each through the project's one runner (``tools/train.py``) and configs:

1. the MAE teacher: the checkpoint shipped in ``checkpoints/`` (made by
   ``configs/pretrain/mae_vit-teacher_fmnist.py``), or trained now with ``--train-teacher``;
2. an MAE student (pixel loss) and a G2SD student (generic distillation from the teacher's
   decoder), same architecture, same data, same schedule;
3. frozen-feature probes (:mod:`g2sd.analysis.probe`: weighted k-NN, k=20, and a linear
   probe) of each encoder on the test split, next to the same probes on the normalised raw
   pixels and on a randomly initialised student;
4. one specific-distillation (SD) row per task (``--tasks``, default ``cls``): the G2SD
   student fine-tuned with distillation from the shipped task teacher.

Every run takes ``--seed`` (``randomness.seed``), the data set's own normalisation (computed
from its training split, or ``--mean/--std``) and no flips unless ``--flip``: see
:func:`dataset_options`. The terminal shows one progress bar per stage and the tables; the
full logs are in the work dir. Writes ``results.json`` and a PNG (loss curves + accuracies).

Example::

    python tools/demo.py                    # ~4 min on 2 cores
    python tools/demo.py --data-root DIR --seed 1   # any idx folder in the Fashion-MNIST layout
    python tools/demo.py --epochs 2 --train-samples 600 --bank-samples 300 --test-samples 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from g2sd.analysis.probe import (  # noqa: E402  (re-exported: the demos' one probe)
    extract_features,
    knn_accuracy,
    linear_probe_accuracy,
    raw_pixel_features,
)

REPO = Path(__file__).resolve().parents[1]
TEACHER_CKPT = REPO / 'checkpoints' / 'fmnist_mae_vit-teacher.pth'
STUDENT_ARCH = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=4, num_heads=3)
TEACHER_ARCH = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=6, num_heads=3)
NORM = dict(mean=0.2860, std=0.3530)
FMNIST_ROOT = '/usr/share/datasets/fashion-mnist'
#: Named architectures of ``--arch`` style options (else a JSON object / .json file of ViT kwargs)
ARCHS = {'fmnist-student': STUDENT_ARCH, 'fmnist-teacher': TEACHER_ARCH}

logger = logging.getLogger('g2sd.demo')


_EPOCH_RE = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\s*\[\s*(\d+)/(\d+)\]')
_ITER_RE = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\]')


def log_progress(text: str, epochs: int | None = None) -> float | None:
    """Fraction of training done in [0, 1] from the last mmengine train line of a log.

    Reads ``Epoch(train) [e][i/n]`` (needs ``epochs``) or ``Iter(train) [i/n]`` lines; None
    when there is none yet.
    """
    it = _ITER_RE.findall(text)
    if it:
        i, n = map(int, it[-1])
        return min(1.0, i / max(n, 1))
    ep = _EPOCH_RE.findall(text)
    if ep and epochs:
        e, i, n = map(int, ep[-1])
        return min(1.0, ((e - 1) * n + i) / (epochs * max(n, 1)))
    return None


def run_logged(
    cmd: list[str], log: Path, progress: str | None = None, epochs: int | None = None
) -> float:
    """Run ``cmd`` from the repo root with its output in ``log``; return the wall time.

    The demos print tables, not training logs: each run's stdout / stderr goes to its own
    log file, and only a failure shows its last lines.

    Args:
        cmd: The command.
        log: Its log file.
        progress: Show a tqdm bar with this label, driven by the log's train lines.
        epochs: Epochs of an epoch-based run (for the bar).

    Raises:
        SystemExit: The command failed (its log tail and path are in the message).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    logger.info('running: %s (log: %s)', ' '.join(cmd), os.path.relpath(log, REPO))
    t0 = time.time()
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        if progress is None:
            proc.wait()
        else:
            from tqdm import tqdm

            with tqdm(total=100, desc=progress, unit='%', leave=True, file=sys.stderr) as bar:
                while proc.poll() is None:
                    time.sleep(0.5)
                    frac = log_progress(log.read_text(errors='replace'), epochs)
                    if frac is not None:
                        bar.update(int(frac * 100) - bar.n)
                if proc.returncode == 0:
                    bar.update(100 - bar.n)
    if proc.returncode != 0:
        tail = '\n'.join(log.read_text(errors='replace').splitlines()[-30:])
        raise SystemExit(f'{tail}\nfailed (exit {proc.returncode}): {" ".join(cmd)}; log: {log}')
    return time.time() - t0


def train(
    config: str,
    work_dir: Path,
    options: list[str],
    progress: str | None = None,
    epochs: int | None = None,
) -> float:
    """Run ``tools/train.py`` in a subprocess (log in ``work_dir``); return its wall time.

    ``progress`` / ``epochs``: a progress bar, see :func:`run_logged`.
    """
    cmd = [
        sys.executable,
        str(REPO / 'tools' / 'train.py'),
        str(REPO / config),
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        *options,
    ]
    return run_logged(cmd, work_dir / 'run.log', progress, epochs)


def last_checkpoint(work_dir: Path) -> Path:
    """The checkpoint mmengine's ``last_checkpoint`` file in ``work_dir`` names."""
    marker = work_dir / 'last_checkpoint'
    if not marker.exists():
        raise SystemExit(f'no last_checkpoint in {work_dir}: the run saved nothing')
    return Path(marker.read_text().strip())


def evaluate_checkpoint(config: str, ckpt: Path, out: Path, extra: list[str]) -> dict:
    """``tools/test.py CONFIG CKPT`` in a subprocess (log next to ``out``); its test metrics."""
    cmd = [sys.executable, str(REPO / 'tools' / 'test.py'), str(REPO / config), str(ckpt)]
    cmd += ['--work-dir', str(out.parent / 'test'), '--out', str(out), '--cfg-options', *extra]
    run_logged(cmd, out.parent / 'test.log')
    return json.loads(out.read_text())['test']


def schedule_options(epochs: int, samples: int, batch: int) -> list[str]:
    """cfg-options for a run of ``epochs`` on ``samples`` images (the schedule follows)."""
    return [
        f'train_cfg.max_epochs={epochs}',
        f'train_dataloader.dataset.num_samples={samples}',
        f'train_dataloader.batch_size={batch}',
        'default_hooks.checkpoint.interval=1000',
        'default_hooks.logger.interval=10',
    ]


def load_fmnist(
    split: str,
    n: int,
    root: str | None = None,
    in_chans: int = 1,
    normalize: bool = True,
    norm: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced Fashion-MNIST subset: images (N, in_chans, 28, 28) and labels (N,).

    The one image loader of the demos and ``tools/analysis/``: normalised with the demo's
    ``NORM`` (the MAE pre-training statistics), or in [0, 1] with ``normalize=False``.

    Args:
        split: ``'train'`` or ``'test'``.
        n: Number of images (class-balanced).
        root: Folder of the idx files; None: Debian's ``dataset-fashion-mnist``.
        in_chans: 1 (gray) or 3 (replicated).
        normalize: Apply ``NORM`` (or ``norm``).
        norm: ``dict(mean=float, std=float)`` to normalise with instead of ``NORM`` (e.g.
            :func:`norm_stats` of ``root``).
    """
    from g2sd.engine.datasets import FashionMNIST

    pipeline: list[dict] = [dict(type='ToTensor')]
    if normalize:
        ns = NORM if norm is None else norm
        pipeline.append(
            dict(type='Normalize', mean=[ns['mean']] * in_chans, std=[ns['std']] * in_chans)
        )
    kwargs = {} if root is None else dict(root=root)
    ds = FashionMNIST(split=split, num_samples=n, in_chans=in_chans, pipeline=pipeline, **kwargs)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it['inputs'] for it in items])
    y = torch.tensor([int(it['data_samples']) for it in items])
    return x, y


def features(encoder: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """L2-normalised pooled features (N, C): :func:`g2sd.analysis.probe.extract_features`."""
    return extract_features(encoder, x, batch)


def _idx_path(root: str | None, split: str, kind: str) -> str:
    """Path of one idx file of a Fashion-MNIST-layout folder (``kind``: images / labels)."""
    stem = 'train' if split == 'train' else 't10k'
    name = 'images-idx3' if kind == 'images' else 'labels-idx1'
    path = Path(root or FMNIST_ROOT) / f'{stem}-{name}-ubyte.gz'
    if not path.exists():
        raise ValueError(f'data root {root!r} has no {path.name}')
    return str(path)


def norm_stats(root: str | None) -> dict:
    """Pixel mean / std (in [0, 1] units) of the training split of an idx-layout folder.

    Args:
        root: Folder with ``train-images-idx3-ubyte.gz`` etc.; None: Debian's fashion-mnist.

    Returns:
        ``dict(mean=float, std=float)`` (population std over all training pixels).

    Raises:
        ValueError: The folder has no training images.
    """
    from g2sd.engine.datasets import read_idx

    x = torch.from_numpy(read_idx(_idx_path(root, 'train', 'images')).copy()).double() / 255.0
    return dict(mean=round(x.mean().item(), 4), std=round(x.std(unbiased=False).item(), 4))


def num_train_images(root: str | None) -> int:
    """Number of images in the training split of an idx-layout folder."""
    from g2sd.engine.datasets import read_idx

    return int(read_idx(_idx_path(root, 'train', 'labels')).shape[0])


def dataset_name(root: str | None) -> str:
    """Display name of a data set: ``'Fashion-MNIST'`` for the default one, else the folder name."""
    if root is None or Path(root).resolve() == Path(FMNIST_ROOT).resolve():
        return 'Fashion-MNIST'
    return Path(root).resolve().name


def dataset_options(
    config: str, norm: dict, root: str | None = None, flip: bool = False
) -> list[str]:
    """cfg-options that point a config at a data set: its normalisation, its root, no flips.

    Walks ``{train,val,test}_dataloader.dataset[.dataset].pipeline`` of the config (loaded with
    mmengine): ``Normalize`` gets ``mean`` / ``std``; flips (``*Flip*`` transforms) get
    probability 0 unless ``flip``; ``g2sd.FashionMNIST`` datasets get ``root``. A
    ``model.data_preprocessor`` (or ``model.student.data_preprocessor``) with ``mean`` / ``std``
    gets them in its own unit (x 255 when its mean is > 1).

    Args:
        config: Config path (relative to the repo root or absolute).
        norm: ``dict(mean=float, std=float)`` in [0, 1] units.
        root: idx folder for the ``FashionMNIST`` datasets; None leaves them.
        flip: Keep the config's flips.

    Returns:
        ``key=value`` strings for ``--cfg-options``.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO / config))
    opts: list[str] = []
    m, sd = norm['mean'], norm['std']
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            continue
        prefix, ds = f'{split}_dataloader.dataset', loader.get('dataset', {})
        while 'pipeline' not in ds and isinstance(ds.get('dataset'), dict):
            prefix, ds = prefix + '.dataset', ds['dataset']
        if root is not None and 'FashionMNIST' in str(ds.get('type', '')):
            opts.append(f'{prefix}.root={root}')
        for i, t in enumerate(ds.get('pipeline') or []):
            kind = str(t.get('type', ''))
            if kind == 'Normalize':
                n = len(t.get('mean', [0]))
                opts += [f'{prefix}.pipeline.{i}.mean={[m] * n}']
                opts += [f'{prefix}.pipeline.{i}.std={[sd] * n}']
            elif 'Flip' in kind and not flip:
                key = 'prob' if 'prob' in t or kind == 'RandomFlip' else 'p'
                opts.append(f'{prefix}.pipeline.{i}.{key}=0.0')
    model = cfg.get('model', {})
    for prefix, sub in (('model', model), ('model.student', model.get('student') or {})):
        pre = sub.get('data_preprocessor') if isinstance(sub, dict) else None
        if isinstance(pre, dict) and 'mean' in pre and 'std' in pre:
            scale = 255.0 if max(pre['mean']) > 1 else 1.0
            n = len(pre['mean'])
            opts.append(f'{prefix}.data_preprocessor.mean={[round(m * scale, 4)] * n}')
            opts.append(f'{prefix}.data_preprocessor.std={[round(sd * scale, 4)] * n}')
    return [o.replace(' ', '') for o in opts]


def parse_arch(value: str) -> dict:
    """An arch name of :data:`ARCHS`, a JSON object, or a path to a JSON file -> ViT kwargs.

    Raises:
        ValueError: ``value`` is none of these, or the JSON is not an object.
    """
    if value in ARCHS:
        return dict(ARCHS[value])
    text = value
    if not value.lstrip().startswith('{'):
        path = Path(value)
        if not path.is_file():
            raise ValueError(
                f'arch {value!r} is not one of {sorted(ARCHS)}, a JSON object or a JSON file'
            )
        text = path.read_text()
    try:
        arch = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'arch {value!r} is not valid JSON: {e}') from None
    if not isinstance(arch, dict):
        raise ValueError(f'arch {value!r} must be a JSON object of ViT keyword args')
    return arch


def build_encoder(arch: dict, checkpoint: Path | None) -> torch.nn.Module:
    """The one ViT as a feature extractor (mean of normed patch tokens), loaded strictly."""
    from g2sd.checkpoint import load_pretrained
    from g2sd.models import VisionTransformer

    enc = VisionTransformer(num_classes=0, global_pool='avg', fc_norm=False, **arch)
    if checkpoint is not None:
        load_pretrained(enc, str(checkpoint), use='backbone')
    return enc


def loss_curves(
    runs: dict[str, Path],
    out: Path,
    accuracies: dict[str, float] | None = None,
    title: str = 'Fashion-MNIST',
) -> None:
    """Plot the logged training loss of each run (mmengine's vis_data/scalars.json).

    With ``accuracies`` (name -> top-1 in [0, 1]) a bar chart of them is drawn next to it.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from g2sd.analysis.report import find_scalars, read_scalars

    ncols = 2 if accuracies else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    for name, wd in runs.items():
        try:
            scalars = find_scalars(wd)
        except FileNotFoundError:
            continue
        ax.plot(*read_scalars(scalars, 'loss'), label=name)
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
    ax.set_title(f'{title} pre-training')
    ax.legend()
    if accuracies:
        bx = axes[0][1]
        names = list(accuracies)
        bx.barh(names, [100 * accuracies[n] for n in names])
        bx.invert_yaxis()
        bx.set_xlabel('top-1 (%)')
        bx.set_title(f'{title}: probes / SD')
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def probe_rows(
    encoders: dict[str, tuple[dict, Path | None] | None],
    bank: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    linear_epochs: int = 100,
) -> dict[str, dict]:
    """k-NN (pooled) and linear (patch tokens) probe top-1 of each encoder (None = raw pixels)."""
    (bx, by), (tx, ty) = bank, test
    out: dict[str, dict] = {}
    for name, spec in encoders.items():
        t0 = time.time()
        if spec is None:
            fb, ft = raw_pixel_features(bx), raw_pixel_features(tx)
            kb, kt, params = fb, ft, 0.0
        else:
            torch.manual_seed(seed)
            enc = build_encoder(*spec)
            kb, kt = extract_features(enc, bx), extract_features(enc, tx)
            fb, ft = (
                extract_features(enc, bx, pool='tokens'),
                extract_features(enc, tx, pool='tokens'),
            )
            params = sum(p.numel() for p in enc.parameters()) / 1e6
        out[name] = dict(
            params_m=params,
            knn=knn_accuracy(kb, by, kt, ty),
            linear=linear_probe_accuracy(fb, by, ft, ty, epochs=linear_epochs, lr=0.01, seed=seed),
            eval_s=time.time() - t0,
        )
    return out


def probe_verdict(probes: dict[str, dict], raw: str = 'raw pixels (no learning)') -> list[str]:
    """One plain sentence per probe: which pre-trained students beat the raw-pixel row.

    Also says when the random-init student beats raw pixels too (then the gain is the
    architecture's, not the pre-training's, for the students not above it).
    """
    out = []
    rand = 'random init student'
    for key, label in (('knn', 'k-NN (pooled)'), ('linear', 'linear (tokens)')):
        base = probes[raw][key]
        beat = [r for r in ('MAE student', 'G2SD student') if r in probes and probes[r][key] > base]
        if not beat:
            out.append(f'{label}: no pre-trained student beats raw pixels ({base:.2%}).')
            continue
        text = f'{label}: {" and ".join(beat)} beat raw pixels ({base:.2%})'
        if rand in probes and probes[rand][key] > base:
            text += f'; so does the random-init student ({probes[rand][key]:.2%})'
        out.append(text + '.')
    return out


def _show(path: Path) -> str:
    """``path`` relative to the repo root when inside it, else absolute."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


SD_TASKS = {
    'cls': (
        'configs/cls/g2sd-sd_vit-student_fmnist.py',
        REPO / 'checkpoints' / 'fmnist_vit-teacher_cls.pth',
    ),
    'det': (
        'configs/det/vitdet_g2sd_fmnist.py',
        REPO / 'checkpoints' / 'fmnist_vitdet-teacher.pth',
    ),
    'seg': (
        'configs/seg/upernet_g2sd_fmnist.py',
        REPO / 'checkpoints' / 'fmnist_upernet-teacher.pth',
    ),
}
#: The metric of each task's SD row (as the evaluator names it) and its display scale
SD_METRIC = {'cls': ('top1', 1.0), 'det': ('coco/bbox_mAP', 100.0), 'seg': ('mIoU', 1.0)}


def sd_task_options(
    task: str, wd: Path, root: str | None, seed: int, student: Path, args: argparse.Namespace
) -> tuple[list[str], list[str]]:
    """(train, test) cfg-options of one SD row; det / seg first write their canvases in ``wd``.

    The canvases are pasted from ``root``'s images (``tools/dataset/make_fmnist_{coco,ade}.py``).
    """
    cfg, teacher = SD_TASKS[task]
    common = [f'model.teacher_checkpoint={teacher}']
    if task == 'cls':
        n = args.sd_samples
        train_opts = [
            f'train_cfg.max_epochs={args.sd_epochs}',
            f'train_cfg.val_interval={args.sd_epochs}',
            f'train_dataloader.dataset.num_samples={n}',
            f'train_dataloader.batch_size={args.batch_size - args.batch_size % 2}',
            f'val_dataloader.dataset.num_samples={args.test_samples}',
            f'default_hooks.checkpoint.interval={args.sd_epochs}',
            'default_hooks.logger.interval=10',
            f'model.student.pretrained={student}',
        ]
        test_opts = [f'test_dataloader.dataset.num_samples={args.test_samples}']
        return common + train_opts, common + test_opts
    import demo_det
    import demo_seg

    maker = 'make_fmnist_coco.py' if task == 'det' else 'make_fmnist_ade.py'
    data = wd / 'data'
    make = [sys.executable, str(REPO / 'tools' / 'dataset' / maker), '--out', str(data)]
    make += ['--seed', str(seed), '--overwrite', '--num-train', str(args.canvases)]
    make += ['--num-val', str(args.val_canvases)]
    if root is not None:
        make += ['--root', root]
    run_logged(make, wd / 'dataset.log')
    if task == 'det':
        dopts = demo_det.data_options(data)
        length = demo_det.length_options(args.sd_iters)
    else:
        dopts = demo_seg.data_options(cfg, data)
        length = demo_seg.length_options(cfg, args.sd_iters)
    length.append('default_hooks.logger.interval=5')
    init = [f'model.student.backbone.pretrained={student}']
    return common + dopts + length + init, common + dopts


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help='output folder')
    parser.add_argument(
        '--data-root',
        default=None,
        help=f'idx folder in the Fashion-MNIST layout (default {FMNIST_ROOT})',
    )
    parser.add_argument('--seed', type=int, default=0, help='randomness.seed of every run')
    parser.add_argument(
        '--mean', type=float, default=None, help='pixel mean in [0, 1] (default: train split)'
    )
    parser.add_argument(
        '--std', type=float, default=None, help='pixel std in [0, 1] (default: train split)'
    )
    parser.add_argument('--flip', action='store_true', help="keep the configs' horizontal flips")
    parser.add_argument('--epochs', type=int, default=4, help='student pre-training epochs')
    parser.add_argument('--train-samples', type=int, default=20000, help='images per epoch')
    parser.add_argument('--test-samples', type=int, default=2000, help='probe test images')
    parser.add_argument('--bank-samples', type=int, default=5000, help='probe train images')
    parser.add_argument('--linear-epochs', type=int, default=100, help='linear-probe steps')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument(
        '--tasks',
        nargs='*',
        default=['cls'],
        choices=sorted(SD_TASKS),
        help='specific-distillation rows (det / seg: tools/demo_det.py, demo_seg.py)',
    )
    parser.add_argument('--sd-epochs', type=int, default=2, help='SD fine-tuning epochs')
    parser.add_argument('--sd-samples', type=int, default=6000, help='SD cls images per epoch')
    parser.add_argument('--sd-iters', type=int, default=30, help='SD det / seg iterations')
    parser.add_argument('--canvases', type=int, default=200, help='det / seg train canvases')
    parser.add_argument('--val-canvases', type=int, default=50, help='det / seg val canvases')
    parser.add_argument(
        '--train-teacher',
        action='store_true',
        help='pre-train the MAE teacher now (on the whole train split) instead of the shipped one',
    )
    parser.add_argument('--teacher-epochs', type=int, default=5)
    parser.add_argument(
        '--teacher-checkpoint',
        default=str(TEACHER_CKPT),
        help='MAE teacher with decoder (default: the shipped one)',
    )
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.teacher_epochs < 2 or args.sd_epochs < 2:
        parser.error('--epochs, --sd-epochs and --teacher-epochs must be >= 2 (warm-up + cosine)')
    logging.basicConfig(level=logging.WARNING, format='%(name)s %(levelname)s %(message)s')
    t_start = time.time()
    torch.manual_seed(args.seed)
    root = None if args.data_root is None else str(Path(args.data_root).resolve())
    name = dataset_name(root)
    stats = norm_stats(root)
    norm = dict(
        mean=stats['mean'] if args.mean is None else args.mean,
        std=stats['std'] if args.std is None else args.std,
    )
    n_train = num_train_images(root)
    args.sd_samples = min(args.sd_samples, n_train)
    work = (REPO / args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.stdout.write(
        f'{name}: {n_train} train images, mean {norm["mean"]:.4f} std '
        f'{norm["std"]:.4f}; work dir {_show(work)} (full logs there)\n'
    )
    sys.stdout.flush()

    def opts_for(config: str) -> list[str]:
        return dataset_options(config, norm, root, args.flip) + [f'randomness.seed={args.seed}']

    times: dict[str, float] = {}
    teacher_ckpt = Path(args.teacher_checkpoint).resolve()
    if args.train_teacher or not teacher_ckpt.exists():
        if not args.train_teacher:
            logger.warning('no shipped teacher at %s: training it now', teacher_ckpt)
        wd = work / 'teacher'
        cfg = 'configs/pretrain/mae_vit-teacher_fmnist.py'
        times['MAE teacher (reference)'] = train(
            cfg,
            wd,
            schedule_options(args.teacher_epochs, n_train, args.batch_size) + opts_for(cfg),
            progress='MAE teacher',
            epochs=args.teacher_epochs,
        )
        teacher_ckpt = wd / 'fmnist_mae_vit-teacher.pth'
    elif root is not None:
        logger.warning(
            '--data-root without --train-teacher: using the shipped Fashion-MNIST teachers (%s)',
            teacher_ckpt.name,
        )

    runs = {
        'MAE student': ('configs/pretrain/mae_vit-student_fmnist.py', []),
        'G2SD student': (
            'configs/pretrain/g2sd-gd_vit-student_fmnist.py',
            [f'model.teacher_checkpoint={teacher_ckpt}'],
        ),
    }
    samples = min(args.train_samples, n_train)
    opts = schedule_options(args.epochs, samples, args.batch_size)
    dirs = {}
    for row, (cfg, extra) in runs.items():
        dirs[row] = work / row.lower().replace(' ', '_')
        times[row] = train(
            cfg, dirs[row], opts + extra + opts_for(cfg), progress=row, epochs=args.epochs
        )

    bank = load_fmnist('train', min(args.bank_samples, n_train), root=root, norm=norm)
    test_set = load_fmnist('test', args.test_samples, root=root, norm=norm)
    encoders = {
        'raw pixels (no learning)': None,
        'random init student': (STUDENT_ARCH, None),
        'MAE student': (STUDENT_ARCH, dirs['MAE student'] / 'student.pth'),
        'G2SD student': (STUDENT_ARCH, dirs['G2SD student'] / 'student.pth'),
        'MAE teacher (reference)': (TEACHER_ARCH, teacher_ckpt),
    }
    from tqdm import tqdm

    probes: dict[str, dict] = {}
    for row in tqdm(list(encoders), desc='probes', file=sys.stderr):
        probes.update(
            probe_rows({row: encoders[row]}, bank, test_set, args.seed, args.linear_epochs)
        )

    sd: dict[str, dict] = {}
    for task in args.tasks:
        cfg = SD_TASKS[task][0]
        wd = work / f'sd_{task}'
        student = dirs['G2SD student'] / 'student.pth'
        train_opts, test_opts = sd_task_options(task, wd, root, args.seed, student, args)
        epochs = args.sd_epochs if task == 'cls' else None
        t = train(cfg, wd, train_opts + opts_for(cfg), progress=f'SD {task}', epochs=epochs)
        metrics = evaluate_checkpoint(
            cfg, last_checkpoint(wd), wd / 'test.json', test_opts + opts_for(cfg)
        )
        key, scale = SD_METRIC[task]
        sd[task] = dict(
            metric=key, value=scale * float(metrics.get(key, 0.0)), metrics=metrics, train_s=t
        )

    png = work / 'demo.png'
    acc = {f'{r} k-NN': v['knn'] for r, v in probes.items()}
    acc.update(
        {
            f'G2SD + SD {k} top-1': v['metrics']['top1'] / 100
            for k, v in sd.items()
            if 'top1' in v['metrics']
        }
    )
    loss_curves(dirs, png, acc, title=name)
    lines = [
        '',
        f'{name}: frozen-encoder probes, {len(bank[1])} train / {len(test_set[1])} test images; '
        f'students pre-trained {args.epochs} epochs x {samples} images, seed {args.seed}',
        f'{"encoder":<26}{"params (M)":>11}{"pre-train s":>13}{"k-NN (pooled)":>15}'
        f'{"linear (tokens)":>17}',
    ]
    for row, r in probes.items():
        ts = f'{times[row]:.0f}' if row in times else '-'
        lines.append(
            f'{row:<26}{r["params_m"]:>11.3f}{ts:>13}{r["knn"]:>15.2%}{r["linear"]:>17.2%}'
        )
    lines.append(
        'note: k-NN = weighted k-NN (k=20) on L2-normalised mean-pooled features; linear = '
        f'softmax probe ({args.linear_epochs} Adam steps) on the flattened patch tokens.'
    )
    lines += probe_verdict(probes)
    if sd:
        lines += [
            '',
            f'{name}: G2SD student + specific distillation from the shipped teachers (cls '
            f'{args.sd_epochs} epochs x {args.sd_samples} images; det / seg {args.sd_iters} '
            f'iterations on {args.canvases} canvases, {args.val_canvases} val)',
            f'{"task":<26}{"train s":>11}{"metric":>28}',
        ]
        for task, v in sd.items():
            m = f'{v["metric"]} {v["value"]:.2f}'
            lines.append(f'{"SD " + task:<26}{v["train_s"]:>11.0f}{m:>28}')
    wall = time.time() - t_start
    lines.append(f'figure: {_show(png)}')
    lines.append(f'results: {_show(work / "results.json")}; total {wall:.0f} s')
    sys.stdout.write('\n'.join(lines) + '\n')
    (work / 'results.txt').write_text('\n'.join(lines) + '\n')
    (work / 'results.json').write_text(
        json.dumps(
            dict(
                dataset=name,
                data_root=root,
                seed=args.seed,
                norm=norm,
                probes=probes,
                sd=sd,
                pretrain_s=times,
                wall_s=wall,
            ),
            indent=1,
            default=float,
        )
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
