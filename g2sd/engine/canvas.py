"""Fashion-MNIST canvases: the shared composition of the offline detection / segmentation sets.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) evaluates its task-specific distillation on COCO (detection) and ADE20K
(semantic segmentation). For CPU-scale runs with real pixels, both sets have an offline proxy
made of the same canvases: ``tools/dataset/make_fmnist_coco.py`` (COCO layout, boxes + RLE
masks) and ``tools/dataset/make_fmnist_ade.py`` (ADE layout, label maps). This module is the
one canvas maker both tools call, so equal arguments and random streams give equal canvases.

A canvas (``side`` square, black) receives ``min_items`` to ``max_items`` Fashion-MNIST items,
each resized (PIL bilinear) from 28 px to a random side in ``[min_size, max_size]`` and pasted
where the tight box of its silhouette (pixels ``> threshold`` after resizing) does not come
within 1 px of a box already placed; silhouettes therefore never overlap. Only silhouette
pixels are pasted, so the canvas is 0 exactly outside the union of the silhouettes.

The random stream (one :class:`numpy.random.Generator`) is consumed in a fixed order per
placement attempt: item index, item side, x offset, y offset (after the item count, drawn
first); a change of that order changes every generated set.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import os.path as osp
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    'CanvasSpec',
    'PastedItem',
    'add_canvas_args',
    'atomic_output_dir',
    'boxes_overlap',
    'label_map',
    'load_fashion_mnist',
    'make_canvas',
    'resize_item',
]

Box = tuple[int, int, int, int]  # inclusive (x0, y0, x1, y1)

# Placement attempts per wanted item before a canvas is left with fewer items.
_ATTEMPTS_PER_ITEM = 20


@dataclass(frozen=True)
class CanvasSpec:
    """Geometry of the canvases (checked on construction).

    Args:
        side: Canvas side (px); canvases are (side, side).
        min_items: Fewest items wanted per canvas (>= 1).
        max_items: Most items per canvas (>= ``min_items``).
        min_size: Smallest pasted item side (px, >= 4).
        max_size: Largest pasted item side (px, ``min_size <= max_size <= side``).
        threshold: Silhouette = resized item pixels ``> threshold`` (in ``[0, 255)``).

    Raises:
        ValueError: An inconsistent value (the message names it).
    """

    side: int = 64
    min_items: int = 1
    max_items: int = 4
    min_size: int = 16
    max_size: int = 36
    threshold: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(
                f'need 1 <= --min-items <= --max-items, got {self.min_items}/{self.max_items}'
            )
        if not 4 <= self.min_size <= self.max_size <= self.side:
            raise ValueError(
                f'need 4 <= --min-size <= --max-size <= --canvas, got '
                f'{self.min_size}/{self.max_size}/{self.side}'
            )
        if not 0 <= self.threshold < 255:
            raise ValueError(f'--threshold must be in [0, 255), got {self.threshold}')

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CanvasSpec:
        """The spec of the flags added by :func:`add_canvas_args`."""
        return cls(
            side=args.canvas,
            min_items=args.min_items,
            max_items=args.max_items,
            min_size=args.min_size,
            max_size=args.max_size,
            threshold=args.threshold,
        )


@dataclass(frozen=True)
class PastedItem:
    """One item pasted on a canvas.

    Attributes:
        label: Fashion-MNIST label (0..9).
        mask: (H, W) bool silhouette on the canvas.
        box: Inclusive tight box ``(x0, y0, x1, y1)`` of ``mask``.
        index: Index of the item in the source ``images``.
        size: Side (px) the 28-px item was resized to.
        offset: ``(x, y)`` of the resized item's top-left corner on the canvas.
    """

    label: int
    mask: np.ndarray
    box: Box
    index: int
    size: int
    offset: tuple[int, int]


def add_canvas_args(parser: argparse.ArgumentParser) -> None:
    """Add the flags of :class:`CanvasSpec` (``--canvas``, ``--min/max-items``,
    ``--min/max-size``, ``--threshold``) with its defaults to ``parser``."""
    d = CanvasSpec()
    parser.add_argument('--canvas', type=int, default=d.side, help='canvas side (px)')
    parser.add_argument(
        '--min-items', type=int, default=d.min_items, help='fewest items per canvas'
    )
    parser.add_argument('--max-items', type=int, default=d.max_items, help='most items per canvas')
    parser.add_argument(
        '--min-size', type=int, default=d.min_size, help='smallest pasted item side (px)'
    )
    parser.add_argument(
        '--max-size', type=int, default=d.max_size, help='largest pasted item side (px)'
    )
    parser.add_argument(
        '--threshold', type=int, default=d.threshold, help='silhouette: pixel > threshold'
    )


def resize_item(item: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (PIL) resize of a (28, 28) uint8 item to (size, size) uint8."""
    from PIL import Image

    return np.asarray(Image.fromarray(item).resize((size, size), Image.BILINEAR))


def boxes_overlap(box: Box, boxes: Sequence[Box]) -> bool:
    """Whether inclusive box ``(x0, y0, x1, y1)`` comes within 1 px of any of ``boxes``."""
    x0, y0, x1, y1 = box
    return any(
        not (x1 + 1 < a0 or a1 + 1 < x0 or y1 + 1 < b0 or b1 + 1 < y0) for a0, b0, a1, b1 in boxes
    )


def make_canvas(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    spec: CanvasSpec,
) -> tuple[np.ndarray, list[PastedItem]]:
    """Compose one canvas.

    Draws the wanted item count, then tries at most ``20 * count`` placements (random item,
    side and offset); an attempt whose silhouette has fewer than 4 pixels or whose box comes
    within 1 px of a placed box is skipped, so a crowded canvas may hold fewer items.

    Args:
        rng: The random stream (consumed as described in the module docstring).
        images: (N, 28, 28) uint8 Fashion-MNIST images.
        labels: (N,) labels (0..9).
        spec: Canvas geometry.

    Returns:
        ``(canvas (side, side) uint8, items)``, items in paste order; their masks do not
        overlap.
    """
    side = spec.side
    canvas = np.zeros((side, side), np.uint8)
    wanted = int(rng.integers(spec.min_items, spec.max_items + 1))
    placed: list[PastedItem] = []
    boxes: list[Box] = []
    for _ in range(wanted * _ATTEMPTS_PER_ITEM):
        if len(placed) == wanted:
            break
        idx = int(rng.integers(len(images)))
        size = int(rng.integers(spec.min_size, spec.max_size + 1))
        patch = resize_item(images[idx], size)
        sil = patch > spec.threshold
        if sil.sum() < 4:
            continue
        ys, xs = np.nonzero(sil)
        ox = int(rng.integers(0, side - size + 1))
        oy = int(rng.integers(0, side - size + 1))
        box = (ox + int(xs.min()), oy + int(ys.min()), ox + int(xs.max()), oy + int(ys.max()))
        if boxes_overlap(box, boxes):
            continue
        region = canvas[oy : oy + size, ox : ox + size]
        region[sil] = patch[sil]
        mask = np.zeros((side, side), bool)
        mask[oy : oy + size, ox : ox + size] = sil
        boxes.append(box)
        placed.append(
            PastedItem(
                label=int(labels[idx]), mask=mask, box=box, index=idx, size=size, offset=(ox, oy)
            )
        )
    return canvas, placed


def label_map(items: Sequence[PastedItem], shape: tuple[int, int]) -> np.ndarray:
    """Semantic label map of a canvas: 0 background, ``label + 1`` (1..10) on each silhouette.

    Items are painted in order, so a later item wins where masks overlap (those of
    :func:`make_canvas` never do).

    Returns:
        (H, W) uint8 map of ``shape``.
    """
    out = np.zeros(shape, np.uint8)
    for item in items:
        out[item.mask] = item.label + 1
    return out


def load_fashion_mnist(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` (``'train'`` / ``'test'``) images (N, 28, 28) uint8 and labels.

    Raises:
        FileNotFoundError: The idx files are missing (the message says how to install them).
        ValueError: An idx file is corrupt (bad gzip stream, header or size), naming ``root``.
    """
    from g2sd.engine.datasets import FashionMNIST

    try:
        ds = FashionMNIST(root=root, split=split)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise ValueError(
            f'Fashion-MNIST {split} idx files under {root} are corrupt: {e}. Reinstall them '
            '(`apt-get install --reinstall dataset-fashion-mnist`) or pass --root <folder>'
        ) from e
    return ds.images, ds.labels


@contextlib.contextmanager
def atomic_output_dir(out: str, overwrite: bool = False) -> Iterator[str]:
    """Write a folder atomically: yield a temporary sibling of ``out``, rename it on success.

    The temporary folder (``.NAME.tmp-*`` next to ``out``) is removed if the body raises, so an
    interrupted run leaves neither a partial ``out`` nor litter.

    Args:
        out: The folder to create.
        overwrite: Replace an existing ``out`` (only once the new one is complete).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    given, out = out, osp.abspath(out)
    if osp.exists(out) and not overwrite:
        raise FileExistsError(f'--out {given} exists; pass --overwrite to replace it')
    parent = osp.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(out)}.tmp-', dir=parent)
    try:
        yield tmp
        if osp.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
