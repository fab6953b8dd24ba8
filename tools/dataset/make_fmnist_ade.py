#!/usr/bin/env python
"""Write an ADE20K-layout semantic-segmentation set of Fashion-MNIST items on black canvases.

The offline proxy for ADE20K of the segmentation stage of G2SD (Huang et al., "Generic-to-
Specific Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771): real pixels,
11 classes (background + the 10 Fashion-MNIST classes), label maps known exactly, small enough
for a CPU. Read by :class:`g2sd.seg.FashionMNISTSegDataset`.

Canvases come from :func:`g2sd.engine.canvas.make_canvas`, the canvas maker of
``make_fmnist_coco.py`` with the same random streams: the same seed and canvas flags give the
same canvases as the COCO set (gray here, RGB there). Each canvas (``--canvas`` square, black)
receives ``--min-items`` to ``--max-items`` Fashion-MNIST items, resized (bilinear) to a side in
``[--min-size, --max-size]``, pasted without overlapping. The label map is 0 (background)
everywhere except on each item's silhouette (pixels above ``--threshold`` after resizing),
where it is the Fashion-MNIST label + 1 (1..10); where silhouettes overlapped the later item
would win (the canvas maker never overlaps them).

``training`` draws items from the Fashion-MNIST train images, ``validation`` from the test
images. Output (mmseg's ADE20K layout)::

    OUT/images/training/000000.png ...        1-channel gray PNGs (uint8)
    OUT/images/validation/000000.png ...
    OUT/annotations/training/000000.png ...   uint8 label maps (mode L), values 0..10
    OUT/annotations/validation/000000.png ...
    OUT/meta.json                             classes, per-split counts, arguments

Deterministic: the same arguments give the same bytes (``meta.json`` records every argument but
``--out`` / ``--overwrite``). The set is written into a temporary folder next to ``OUT`` and
renamed into place, so an interrupted run leaves no partial set; an existing ``OUT`` is refused
unless ``--overwrite``.

Usage::

    python tools/dataset/make_fmnist_ade.py --out data/fmnist_ade --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import os.path as osp
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from g2sd.engine.canvas import (
    CanvasSpec,
    add_canvas_args,
    atomic_output_dir,
    label_map,
    load_fashion_mnist,
    make_canvas,
)

logger = logging.getLogger('make_fmnist_ade')

# (output split, Fashion-MNIST split); the index is the random stream of the split, as in
# make_fmnist_coco.py's ('train', 'val').
SPLITS = (('training', 'train'), ('validation', 'test'))
NUM_CLASSES = 11  # background + 10 items


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        description='Paste Fashion-MNIST items on black canvases and write an ADE20K-layout '
        'semantic-segmentation set (gray PNGs + uint8 label maps, 0 = background, '
        '1..10 = item class + 1) for the seg/ CPU runs.'
    )
    p.add_argument('--out', default='data/fmnist_ade', help='output folder')
    p.add_argument('--root', default='/usr/share/datasets/fashion-mnist', help='idx files')
    p.add_argument('--seed', type=int, default=0, help='random seed (same seed, same bytes)')
    p.add_argument('--num-train', type=int, default=1000, help='training canvases')
    p.add_argument('--num-val', type=int, default=200, help='validation canvases')
    add_canvas_args(p)
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    args = p.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first inconsistent argument."""
    if args.num_train < 0 or args.num_val < 0 or args.num_train + args.num_val == 0:
        raise ValueError(
            f'--num-train/--num-val must be >= 0 and not both 0, got '
            f'{args.num_train}/{args.num_val}'
        )
    CanvasSpec.from_args(args)  # raises on inconsistent canvas flags


def write_split(
    out: str,
    split: str,
    num: int,
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spec: CanvasSpec,
) -> dict[str, Any]:
    """Write ``num`` canvases of ``split`` (image + label-map PNGs) under ``out``.

    Returns:
        ``dict(images, items, pixels)``: canvas count, pasted items, and per-class pixel
        counts (list of 11, index = label value).
    """
    from PIL import Image

    img_dir = osp.join(out, 'images', split)
    ann_dir = osp.join(out, 'annotations', split)
    os.makedirs(img_dir)
    os.makedirs(ann_dir)
    items = 0
    pixels = np.zeros(NUM_CLASSES, np.int64)
    for i in range(num):
        canvas, placed = make_canvas(rng, images, labels, spec)
        seg = label_map(placed, canvas.shape)
        name = f'{i:06d}.png'
        Image.fromarray(canvas, 'L').save(osp.join(img_dir, name))
        Image.fromarray(seg, 'L').save(osp.join(ann_dir, name))
        items += len(placed)
        pixels += np.bincount(seg.ravel(), minlength=NUM_CLASSES)
    return dict(images=num, items=items, pixels=pixels.tolist())


def make_dataset(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Write the whole set atomically to ``args.out``; return per-split counts.

    Raises:
        FileExistsError: ``args.out`` exists and ``args.overwrite`` is false.
        FileNotFoundError: The Fashion-MNIST idx files are missing.
        ValueError: They are corrupt.
    """
    from g2sd.engine.datasets import FASHION_MNIST_CLASSES

    spec = CanvasSpec.from_args(args)
    counts: dict[str, dict[str, Any]] = {}
    with atomic_output_dir(args.out, args.overwrite) as tmp:
        nums = dict(training=args.num_train, validation=args.num_val)
        for i, (split, source) in enumerate(SPLITS):
            images, labels = load_fashion_mnist(args.root, source)
            rng = np.random.default_rng([args.seed, i])
            counts[split] = write_split(tmp, split, nums[split], images, labels, rng, spec)
        meta = dict(
            description='Fashion-MNIST ADE-layout canvases (tools/dataset/make_fmnist_ade.py)',
            classes=['background', *FASHION_MNIST_CLASSES],
            label_values='0 = background, k + 1 = Fashion-MNIST label k',
            counts=counts,
            args={k: v for k, v in sorted(vars(args).items()) if k not in ('out', 'overwrite')},
        )
        with open(osp.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, sort_keys=True, indent=1)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors are one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args(argv)
    try:
        counts = make_dataset(args)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as e:
        sys.stderr.write(f'make_fmnist_ade.py: error: {e}\n')
        return 1
    for split, c in counts.items():
        bg = c['pixels'][0] / max(1, sum(c['pixels']))
        logger.info(f'{split}: {c["images"]} images, {c["items"]} items, {bg:.1%} background')
    logger.info(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
