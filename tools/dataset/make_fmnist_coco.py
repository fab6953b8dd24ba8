#!/usr/bin/env python
"""Write a COCO-format instance-segmentation set of Fashion-MNIST items on black canvases.

The offline proxy for COCO of the detection stage of G2SD (Huang et al., "Generic-to-Specific
Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771): real pixels, 10 classes,
boxes and masks known exactly, small enough for a CPU.

Canvases come from :func:`g2sd.engine.canvas.make_canvas` (shared with
``make_fmnist_ade.py``: the same seed and canvas flags give the same canvases). Each canvas
(``--canvas`` square, black) receives ``--min-items`` to ``--max-items`` Fashion-MNIST items,
each resized (bilinear) from 28 px to a random size in ``[--min-size, --max-size]`` and
pasted where its tight box does not overlap any box already placed (plus a 1-px gap). Per item:

* class = the Fashion-MNIST label (category ids 1..10, names of
  :data:`g2sd.engine.datasets.FASHION_MNIST_CLASSES`);
* mask = its silhouette, pixels above ``--threshold`` after resizing, as COCO RLE
  (``pycocotools.mask.encode``) with ``area`` = mask pixels;
* bbox = the tight box of the silhouette, COCO ``[x, y, w, h]``.

The ``train`` split draws items from the Fashion-MNIST train images, ``val`` from the test
images. Output (read by mmdet's ``CocoDataset`` with ``metainfo=dict(classes=...)``)::

    OUT/train/000000.png ...        3-channel RGB PNGs (gray replicated)
    OUT/val/000000.png ...
    OUT/annotations/instances_train.json
    OUT/annotations/instances_val.json

Deterministic: the same arguments give the same bytes. The set is written into a temporary
folder next to ``OUT`` and renamed into place, so an interrupted run leaves no partial set;
an existing ``OUT`` is refused unless ``--overwrite``.

Usage::

    python tools/dataset/make_fmnist_coco.py --out data/fmnist_coco --seed 0
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
    load_fashion_mnist,
    make_canvas,
)

logger = logging.getLogger('make_fmnist_coco')

SPLITS = (('train', 'train'), ('val', 'test'))  # (output split, Fashion-MNIST split)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        description='Paste Fashion-MNIST items on black canvases and write a COCO-format '
        'instance-segmentation set (boxes + RLE masks) for the det/ CPU runs.'
    )
    p.add_argument('--out', default='data/fmnist_coco', help='output folder')
    p.add_argument('--root', default='/usr/share/datasets/fashion-mnist', help='idx files')
    p.add_argument('--seed', type=int, default=0, help='random seed (same seed, same bytes)')
    p.add_argument('--num-train', type=int, default=1000, help='train canvases')
    p.add_argument('--num-val', type=int, default=200, help='val canvases')
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
    classes: Sequence[str],
    rng: np.random.Generator,
    args: argparse.Namespace,
) -> dict[str, int]:
    """Write ``num`` canvases of ``split`` (PNGs + COCO json) under ``out``; return counts."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    os.makedirs(osp.join(out, split), exist_ok=True)
    coco: dict[str, Any] = dict(
        info=dict(description=f'Fashion-MNIST COCO canvases ({split}), seed {args.seed}'),
        images=[],
        annotations=[],
        categories=[dict(id=i + 1, name=name) for i, name in enumerate(classes)],
    )
    ann_id = 1
    for img_id in range(num):
        canvas, instances = make_canvas(rng, images, labels, CanvasSpec.from_args(args))
        name = f'{img_id:06d}.png'
        Image.fromarray(np.stack([canvas] * 3, axis=-1), 'RGB').save(osp.join(out, split, name))
        coco['images'].append(
            dict(id=img_id + 1, file_name=name, width=args.canvas, height=args.canvas)
        )
        for inst in instances:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            x0, y0, x1, y1 = inst.box
            coco['annotations'].append(
                dict(
                    id=ann_id,
                    image_id=img_id + 1,
                    category_id=inst.label + 1,
                    bbox=[x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                    area=int(mask_utils.area(rle)),
                    segmentation=dict(size=list(rle['size']), counts=rle['counts'].decode()),
                    iscrowd=0,
                )
            )
            ann_id += 1
    with open(osp.join(out, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f, sort_keys=True)
    return dict(images=num, instances=ann_id - 1)


def make_dataset(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """Write the whole set atomically to ``args.out``; return per-split counts.

    Raises:
        FileExistsError: ``args.out`` exists and ``args.overwrite`` is false.
        FileNotFoundError: The Fashion-MNIST idx files are missing.
        ValueError: They are corrupt.
    """
    from g2sd.engine.datasets import FASHION_MNIST_CLASSES

    counts = {}
    with atomic_output_dir(args.out, args.overwrite) as tmp:
        os.makedirs(osp.join(tmp, 'annotations'))
        nums = dict(train=args.num_train, val=args.num_val)
        for i, (split, source) in enumerate(SPLITS):
            images, labels = load_fashion_mnist(args.root, source)
            rng = np.random.default_rng([args.seed, i])
            counts[split] = write_split(
                tmp, split, nums[split], images, labels, FASHION_MNIST_CLASSES, rng, args
            )
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors are one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args(argv)
    try:
        counts = make_dataset(args)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as e:
        sys.stderr.write(f'make_fmnist_coco.py: error: {e}\n')
        return 1
    for split, c in counts.items():
        logger.info(f'{split}: {c["images"]} images, {c["instances"]} instances')
    logger.info(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
