"""Mean attention distance per head and layer of ViT encoders (D-MAE's analysis).

D-MAE (Wang et al., "A Closer Look at Self-Supervised Lightweight Vision Transformers",
ICML 2023) plots, for every block of a lightweight ViT, each head's mean attention distance
``D = mean_i sum_j softmax(A)_ij G_ij`` (``G_ij``: pixel distance between the centres of
patches i and j; ViT, Dosovitskiy et al., ICLR 2021, Fig. 7) to show which pre-training
teaches the lower layers to look locally. This tool computes it for several encoders
(e.g. random init / MAE / D-MAE / G2SD students) on Fashion-MNIST images and writes
``<out-dir>/<name>.png`` (one panel per model: a dot per head against the layer, the layer
mean as a line, the uniform-attention value dashed) and ``<out-dir>/<name>.json``; the table
of per-layer means goes to stdout. The definition (class token excluded as query and key,
softmax over all tokens, patch part renormalised unless ``--no-renormalize``) is
:mod:`g2sd.analysis.attention_distance`'s.

Example::

    python tools/analysis/attention_distance.py \\
        --model random=random \\
        --model MAE=work_dirs/demo/mae_student/student.pth \\
        --model G2SD=work_dirs/demo/g2sd_student/student.pth \\
        --num-images 500 --out-dir work_dirs/analysis
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tools'))
from demo import build_encoder, load_fmnist, parse_arch  # noqa: E402

from g2sd.analysis.attention_distance import (  # noqa: E402
    model_attention_distance,
    uniform_attention_distance,
)

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'
RANDOM = 'random'

logger = logging.getLogger('g2sd.analysis.attention_distance')


def parse_model(spec: str) -> tuple[str, Path | None]:
    """``NAME=CKPT`` -> (NAME, path); ``NAME=random`` or a bare ``random`` -> (NAME, None)."""
    if '=' not in spec:
        if spec == RANDOM:
            return RANDOM, None
        raise ValueError(f'--model {spec!r} must be NAME=CKPT (or NAME=random)')
    name, ckpt = spec.split('=', 1)
    if not name:
        raise ValueError(f'--model {spec!r} has an empty NAME')
    if ckpt == RANDOM:
        return name, None
    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f'--model {spec!r}: checkpoint {ckpt!r} not found')
    return name, path


def plot(results: dict[str, list[list[float]]], uniform: float, path: Path) -> None:
    """One panel per model: each head's distance (dots) against the layer, layer mean line."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.6, 3.4), sharey=True, squeeze=False)
    for ax, (name, per_head) in zip(axes[0], results.items()):
        for layer, row in enumerate(per_head, start=1):
            vals = [v for v in row if not math.isnan(v)]
            ax.scatter([layer] * len(vals), vals, s=18, alpha=0.8, color='tab:blue')
        means = [
            sum(v for v in r if not math.isnan(v)) / sum(1 for v in r if not math.isnan(v))
            for r in per_head
        ]
        ax.plot(range(1, len(means) + 1), means, color='tab:orange', lw=1, label='layer mean')
        ax.axhline(uniform, color='gray', ls='--', lw=1, label='uniform attention')
        ax.set_title(name)
        ax.set_xlabel('layer')
        ax.set_xticks(range(1, len(per_head) + 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('mean attention distance (px)')
    axes[0][0].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='NAME=random builds the architecture with random init (seeded by --seed).',
    )
    parser.add_argument(
        '--model',
        action='append',
        required=True,
        metavar='NAME=CKPT',
        help='an encoder to analyse (repeatable): checkpoint of any format the strict '
        "'backbone' loader reads, or NAME=random for a randomly initialised one",
    )
    parser.add_argument(
        '--arch',
        default='fmnist-student',
        help='ViT of every model: fmnist-student (the demo students, default), fmnist-teacher '
        '(the demo MAE teacher) or a JSON object / file of VisionTransformer keyword arguments',
    )
    parser.add_argument('--num-images', type=int, default=500, help='images to average over')
    parser.add_argument('--data-root', default=DEFAULT_ROOT, help='Fashion-MNIST idx folder')
    parser.add_argument('--split', choices=('train', 'test'), default='test')
    parser.add_argument(
        '--no-renormalize',
        action='store_true',
        help='use the patch-to-patch weights of the full softmax as they are (mass on the '
        'class token counts as distance 0) instead of renormalising each row to 1',
    )
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0, help='seed of the random-init models')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out-dir', default='work_dirs/analysis', help='PNG + JSON folder')
    parser.add_argument('--name', default='attention_distance', help='output file stem')
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f'--num-images must be >= 1, got {args.num_images}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    try:
        arch = parse_arch(args.arch)
        models = [parse_model(spec) for spec in args.model]
    except ValueError as err:
        parser.error(str(err))
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        parser.error(f'--model names must be unique, got {names}')
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')

    images = load_fmnist(args.split, args.num_images, root=args.data_root)[0]
    results: dict[str, list[list[float]]] = {}
    info: dict[str, dict] = {}
    grid = patch = None
    for name, ckpt in models:
        t0 = time.time()
        torch.manual_seed(args.seed)
        model = build_encoder(arch, ckpt).to(args.device)
        dist = model_attention_distance(
            model, images, renormalize=not args.no_renormalize, batch_size=args.batch_size
        )
        grid, patch = model.grid_of(images), tuple(model.patch_size)
        results[name] = dist.tolist()
        info[name] = {
            'checkpoint': str(ckpt) if ckpt is not None else None,
            'per_head': dist.tolist(),
            'per_layer_mean': dist.nanmean(1).tolist(),
            'seconds': round(time.time() - t0, 2),
        }
        logger.info('%s: %.1f s', name, time.time() - t0)
    uniform = uniform_attention_distance(grid, patch)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f'{args.name}.png', out / f'{args.name}.json'
    plot(results, uniform, png)
    report = {
        'definition': (
            'D = mean over images and patch queries i of sum_j a_ij G_ij, a = softmax(q k^T '
            '/ sqrt(head_dim) + bias) over all tokens, patch-to-patch part '
            + ('as is' if args.no_renormalize else 'renormalised per row')
            + '; G = pixel distance between patch centres'
        ),
        'renormalize': not args.no_renormalize,
        'arch': arch,
        'grid': list(grid),
        'patch_size': list(patch),
        'num_images': len(images),
        'data_root': args.data_root,
        'split': args.split,
        'seed': args.seed,
        'uniform_attention_distance': uniform,
        'models': info,
    }
    js.write_text(json.dumps(report, indent=2))

    depth = max(len(v) for v in results.values())
    width = max(12, *(len(n) for n in results))
    lines = [f'Mean attention distance (px, mean over heads) of {len(images)} images']
    lines.append('layer'.ljust(8) + ''.join(n.rjust(width + 2) for n in results))
    for layer in range(depth):
        row = ''.join(
            (f'{info[n]["per_layer_mean"][layer]:.2f}' if layer < len(results[n]) else '-').rjust(
                width + 2
            )
            for n in results
        )
        lines.append(str(layer + 1).ljust(8) + row)
    lines.append(f'uniform attention: {uniform:.2f} px; figure {png}; data {js}')
    sys.stdout.write('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
