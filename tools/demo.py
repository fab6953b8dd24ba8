"""End-to-end G2SD demo on real images (Fashion-MNIST), on CPU in a few minutes.

Steps, each through the project's one runner (``tools/train.py``) and configs:

1. the MAE teacher: the checkpoint shipped in ``checkpoints/`` (made by
   ``configs/pretrain/mae_vit-teacher_fmnist.py``), or trained now with ``--train-teacher``;
2. an MAE student (pixel loss) and a G2SD student (generic distillation from the teacher's
   decoder), same architecture, same data, same schedule;
3. a k-NN probe (cosine, k=20, temperature-weighted votes) of each encoder's pooled
   features on the Fashion-MNIST test set, plus a randomly initialised student.

Prints a table and writes a PNG of the training-loss curves into the work dir.

Example::

    python tools/demo.py                    # ~5 min on 2 cores
    python tools/demo.py --epochs 1 --train-samples 2000 --test-samples 1000   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
TEACHER_CKPT = REPO / 'checkpoints' / 'fmnist_mae_vit-teacher.pth'
STUDENT_ARCH = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=4, num_heads=3)
TEACHER_ARCH = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=6, num_heads=3)
NORM = dict(mean=0.2860, std=0.3530)
#: Named architectures of ``--arch`` style options (else a JSON object / .json file of ViT kwargs)
ARCHS = {'fmnist-student': STUDENT_ARCH, 'fmnist-teacher': TEACHER_ARCH}

logger = logging.getLogger('g2sd.demo')


def run_logged(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repo root with its output in ``log``; return the wall time.

    The demos print tables, not training logs: each run's stdout / stderr goes to its own
    log file, and only a failure shows its last lines.

    Raises:
        SystemExit: The command failed (its log tail and path are in the message).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    logger.info('running: %s (log: %s)', ' '.join(cmd), os.path.relpath(log, REPO))
    t0 = time.time()
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = '\n'.join(log.read_text(errors='replace').splitlines()[-30:])
        raise SystemExit(f'{tail}\nfailed (exit {proc.returncode}): {" ".join(cmd)}; log: {log}')
    return time.time() - t0


def train(config: str, work_dir: Path, options: list[str]) -> float:
    """Run ``tools/train.py`` in a subprocess (log in ``work_dir``); return its wall time."""
    cmd = [
        sys.executable,
        str(REPO / 'tools' / 'train.py'),
        str(REPO / config),
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        *options,
    ]
    return run_logged(cmd, work_dir / 'run.log')


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced Fashion-MNIST subset: images (N, in_chans, 28, 28) and labels (N,).

    The one image loader of the demos and ``tools/analysis/``: normalised with the demo's
    ``NORM`` (the MAE pre-training statistics), or in [0, 1] with ``normalize=False``.

    Args:
        split: ``'train'`` or ``'test'``.
        n: Number of images (class-balanced).
        root: Folder of the idx files; None: Debian's ``dataset-fashion-mnist``.
        in_chans: 1 (gray) or 3 (replicated).
        normalize: Apply ``NORM``.
    """
    from g2sd.engine.datasets import FashionMNIST

    pipeline: list[dict] = [dict(type='ToTensor')]
    if normalize:
        pipeline.append(
            dict(type='Normalize', mean=[NORM['mean']] * in_chans, std=[NORM['std']] * in_chans)
        )
    kwargs = {} if root is None else dict(root=root)
    ds = FashionMNIST(split=split, num_samples=n, in_chans=in_chans, pipeline=pipeline, **kwargs)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it['inputs'] for it in items])
    y = torch.tensor([int(it['data_samples']) for it in items])
    return x, y


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """L2-normalised pooled features (N, C)."""
    encoder.eval()
    out = [encoder(x[i : i + batch]) for i in range(0, len(x), batch)]
    return F.normalize(torch.cat(out), dim=1)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 20, t: float = 0.07) -> float:
    """Weighted k-NN top-1 (DINO protocol): votes exp(cos / t) of the k nearest."""
    sim = test_f @ train_f.T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(test_f), int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[idx], (top / t).exp())
    return (votes.argmax(1) == test_y).float().mean().item()


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


def loss_curves(runs: dict[str, Path], out: Path) -> None:
    """Plot the logged training loss of each run (mmengine's vis_data/scalars.json)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, wd in runs.items():
        files = sorted(wd.glob('*/vis_data/scalars.json'))
        if not files:
            continue
        steps, losses = [], []
        for line in files[-1].read_text().splitlines():
            rec = json.loads(line)
            if 'loss' in rec and 'step' in rec:
                steps.append(rec['step'])
                losses.append(rec['loss'])
        ax.plot(steps, losses, label=name)
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
    ax.set_title('Fashion-MNIST pre-training')
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help='output folder')
    parser.add_argument('--epochs', type=int, default=4, help='student pre-training epochs')
    parser.add_argument('--train-samples', type=int, default=20000, help='images per epoch')
    parser.add_argument('--test-samples', type=int, default=10000, help='k-NN test images')
    parser.add_argument('--bank-samples', type=int, default=10000, help='k-NN memory bank')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument(
        '--train-teacher',
        action='store_true',
        help='pre-train the MAE teacher now instead of using the shipped one',
    )
    parser.add_argument('--teacher-epochs', type=int, default=5)
    parser.add_argument(
        '--teacher-checkpoint',
        default=str(TEACHER_CKPT),
        help='MAE teacher with decoder (default: the shipped one)',
    )
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.teacher_epochs < 2:
        parser.error('--epochs and --teacher-epochs must be >= 2 (1 warm-up epoch + cosine)')
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    torch.manual_seed(0)
    work = (REPO / args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    times: dict[str, float] = {}
    teacher_ckpt = Path(args.teacher_checkpoint).resolve()
    if args.train_teacher or not teacher_ckpt.exists():
        if not args.train_teacher:
            logger.warning('no shipped teacher at %s: training it now', teacher_ckpt)
        wd = work / 'teacher'
        times['MAE teacher'] = train(
            'configs/pretrain/mae_vit-teacher_fmnist.py',
            wd,
            schedule_options(args.teacher_epochs, 60000, args.batch_size),
        )
        teacher_ckpt = wd / 'fmnist_mae_vit-teacher.pth'

    runs = {
        'MAE student': ('configs/pretrain/mae_vit-student_fmnist.py', []),
        'G2SD student': (
            'configs/pretrain/g2sd-gd_vit-student_fmnist.py',
            [f'model.teacher_checkpoint={teacher_ckpt}'],
        ),
    }
    opts = schedule_options(args.epochs, args.train_samples, args.batch_size)
    dirs = {}
    for name, (cfg, extra) in runs.items():
        dirs[name] = work / name.lower().replace(' ', '_')
        times[name] = train(cfg, dirs[name], opts + extra)

    bank_x, bank_y = load_fmnist('train', args.bank_samples)
    test_x, test_y = load_fmnist('test', args.test_samples)
    rows = []
    encoders = {
        'random init student': (STUDENT_ARCH, None),
        'MAE student': (STUDENT_ARCH, dirs['MAE student'] / 'student.pth'),
        'G2SD student': (STUDENT_ARCH, dirs['G2SD student'] / 'student.pth'),
        'MAE teacher (reference)': (TEACHER_ARCH, teacher_ckpt),
    }
    for name, (arch, ckpt) in encoders.items():
        t0 = time.time()
        enc = build_encoder(arch, ckpt)
        acc = knn_accuracy(features(enc, bank_x), bank_y, features(enc, test_x), test_y)
        params = sum(p.numel() for p in enc.parameters()) / 1e6
        rows.append((name, params, times.get(name), acc, time.time() - t0))

    png = work / 'loss_curves.png'
    loss_curves(dirs, png)
    lines = [
        '',
        f'Fashion-MNIST k-NN (k=20) top-1, bank {args.bank_samples} train / '
        f'{args.test_samples} test images; students pre-trained {args.epochs} epochs x '
        f'{args.train_samples} images',
        f'{"encoder":<26}{"params (M)":>11}{"pre-train s":>13}{"k-NN top-1":>12}{"eval s":>8}',
    ]
    for name, params, t, acc, te in rows:
        ts = f'{t:.0f}' if t is not None else '-'
        lines.append(f'{name:<26}{params:>11.3f}{ts:>13}{acc:>12.2%}{te:>8.1f}')
    lines.append(f'loss curves: {os.path.relpath(png, REPO)}')
    sys.stdout.write('\n'.join(lines) + '\n')
    (work / 'results.txt').write_text('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
