"""Image datasets for g2sd pre-training and classification runs.

Generic distillation (G2SD, Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) trains on ImageNet-1k images without labels;
:class:`ImageFolder` reads the standard class-folder layout. :class:`FashionMNIST` reads
Debian's ``dataset-fashion-mnist`` (real images available offline) for CPU-scale runs.

Items are ``dict(inputs=Tensor, data_samples=int)``; configs use
``collate_fn=dict(type='default_collate')``.
"""

from __future__ import annotations

import gzip
import logging
import os
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from g2sd.engine.transforms import build_pipeline
from g2sd.registry import DATASETS

__all__ = ['FashionMNIST', 'ImageFolder', 'balanced_subset', 'read_idx']

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class CorruptImageError(OSError):
    """An image file that exists but cannot be decoded."""


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) IDX file (MNIST format) into a uint8 array.

    Raises:
        ValueError: The file is not a uint8 IDX file or its size does not match its header.
    """
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f'{path} is not a uint8 IDX file (header {data[:4]!r})')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f'{path}: header says {dims} but holds {len(data) - offset} bytes')
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def balanced_subset(labels: np.ndarray, num_samples: int) -> np.ndarray:
    """Deterministic class-balanced subset: the first items of every class, in file order.

    Each class gets ``num_samples // C`` items; the remainder goes one each to the lowest
    class ids. Returns sorted indices.

    Raises:
        ValueError: ``num_samples`` is not in ``[1, len(labels)]`` or a class has too few items.
    """
    if not 1 <= num_samples <= len(labels):
        raise ValueError(f'num_samples must be in [1, {len(labels)}], got {num_samples}')
    classes = np.unique(labels)
    base, extra = divmod(num_samples, len(classes))
    picked = []
    for i, c in enumerate(classes):
        want = base + (1 if i < extra else 0)
        idx = np.flatnonzero(labels == c)[:want]
        if len(idx) < want:
            raise ValueError(f'class {c} has {len(idx)} items, {want} needed for {num_samples}')
        picked.append(idx)
    return np.sort(np.concatenate(picked))


@DATASETS.register_module()
class FashionMNIST(Dataset):
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (60k train / 10k test, 28x28).

    Args:
        root: Folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
        split: ``'train'`` or ``'test'``.
        pipeline: Transform configs (see :func:`g2sd.engine.transforms.build_pipeline`),
            applied to a PIL image.
        num_samples: Use a deterministic class-balanced subset of this size.
        in_chans: 1 (grayscale ``'L'`` images) or 3 (replicated to ``'RGB'``).
    """

    METAINFO = dict(classes=FASHION_MNIST_CLASSES)

    def __init__(
        self,
        root: str = '/usr/share/datasets/fashion-mnist',
        split: Literal['train', 'test'] = 'train',
        pipeline: Sequence[dict | Callable[..., Any]] | None = None,
        num_samples: int | None = None,
        in_chans: int = 1,
    ) -> None:
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if in_chans not in (1, 3):
            raise ValueError(f'in_chans must be 1 or 3, got {in_chans!r}')
        stem = 'train' if split == 'train' else 't10k'
        paths = [osp.join(root, f'{stem}-{k}-ubyte.gz') for k in ('images-idx3', 'labels-idx1')]
        for p in paths:
            if not osp.isfile(p):
                raise FileNotFoundError(
                    f'Fashion-MNIST file {p} not found. Install the Debian package: '
                    '`apt-get install dataset-fashion-mnist` (files go to '
                    '/usr/share/datasets/fashion-mnist), or pass root=<folder with the idx files>'
                )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f'{root}: images {images.shape} and labels {labels.shape} mismatch')
        if num_samples is not None:
            keep = balanced_subset(labels, num_samples)
            images, labels = images[keep], labels[keep]
        self.images = images
        self.labels = labels.astype(np.int64)
        self.in_chans = in_chans
        self.split = split
        self.pipeline = build_pipeline(pipeline)
        self.metainfo = dict(self.METAINFO)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img = Image.fromarray(np.ascontiguousarray(self.images[idx]))  # uint8 (H, W) -> 'L'
        if self.in_chans == 3:
            img = img.convert('RGB')
        return dict(inputs=self.pipeline(img), data_samples=int(self.labels[idx]))


@DATASETS.register_module()
class ImageFolder(Dataset):
    """ImageNet-style class folders: ``root/<class>/<image>``.

    Classes are the sorted sub-folder names; files with an image extension are read
    recursively. Images are opened with PIL, converted to RGB, then ``pipeline`` runs.

    Args:
        root: Dataset folder (e.g. ``data/imagenet/train``).
        pipeline: Transform configs (see :func:`g2sd.engine.transforms.build_pipeline`).
        extensions: Accepted file suffixes (lower case).
        allow_empty_classes: Keep class folders without any image (their label index stays
            reserved) with a warning naming them, instead of refusing them.

    Raises:
        FileNotFoundError: ``root`` is not a folder, has no class folders or no images.
        ValueError: A class folder holds no image (unless ``allow_empty_classes``).
    """

    def __init__(
        self,
        root: str,
        pipeline: Sequence[dict | Callable[..., Any]] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        allow_empty_classes: bool = False,
    ) -> None:
        if not osp.isdir(root):
            raise FileNotFoundError(f'ImageFolder root {root!r} is not a directory')
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not classes:
            raise FileNotFoundError(f'ImageFolder root {root!r} has no class sub-folders')
        exts = tuple(e.lower() for e in extensions)
        samples: list[tuple[str, int]] = []
        empty: list[str] = []
        for label, cls in enumerate(classes):
            before = len(samples)
            for dirpath, _, files in sorted(os.walk(osp.join(root, cls), followlinks=True)):
                for fn in sorted(files):
                    if fn.lower().endswith(exts):
                        samples.append((osp.join(dirpath, fn), label))
            if len(samples) == before:
                empty.append(cls)
        if not samples:
            raise FileNotFoundError(f'no images with extensions {exts} under {root!r}')
        if empty:
            msg = (
                f'ImageFolder {root!r}: class folder(s) {empty[:10]} ({len(empty)} of '
                f'{len(classes)}) hold no image with extensions {exts}'
            )
            if not allow_empty_classes:
                raise ValueError(
                    f'{msg}; an empty folder would become a class that never occurs. Remove '
                    'it, or pass allow_empty_classes=True to keep its label index'
                )
            logger.warning('%s; kept (allow_empty_classes=True)', msg)
        self.root = root
        self.classes = classes
        self.samples = samples
        self.pipeline = build_pipeline(pipeline)
        self.metainfo = dict(classes=tuple(classes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        path, label = self.samples[idx]
        try:
            with Image.open(path) as im:
                img = im.convert('RGB')
        except (OSError, SyntaxError, ValueError) as err:
            raise CorruptImageError(f'cannot decode image {path!r}: {err}') from err
        return dict(inputs=self.pipeline(img), data_samples=label)
