"""Datasets and transform pipelines of g2sd.engine."""

from __future__ import annotations

import gzip
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from g2sd.engine.datasets import (
    CorruptImageError,
    FashionMNIST,
    ImageFolder,
    balanced_subset,
    read_idx,
)
from g2sd.engine.transforms import TwoViews, build_pipeline, build_transform

FMNIST = '/usr/share/datasets/fashion-mnist'
needs_fmnist = pytest.mark.skipif(
    not osp.isfile(osp.join(FMNIST, 't10k-images-idx3-ubyte.gz')),
    reason='Debian dataset-fashion-mnist not installed',
)


@needs_fmnist
def test_fashion_mnist_real_files():
    ds = FashionMNIST(split='test', num_samples=30, pipeline=[dict(type='ToTensor')])
    assert len(ds) == 30
    assert np.bincount(ds.labels).tolist() == [3] * 10
    item = ds[0]
    assert item['inputs'].shape == (1, 28, 28) and item['inputs'].dtype == torch.float32
    assert isinstance(item['data_samples'], int)
    assert float(item['inputs'].max()) <= 1.0 and float(item['inputs'].std()) > 0.05
    rgb = FashionMNIST(
        split='test',
        num_samples=10,
        in_chans=3,
        pipeline=[dict(type='Resize', size=32, interpolation='bicubic'), dict(type='ToTensor')],
    )
    assert rgb[0]['inputs'].shape == (3, 32, 32)
    # same subset every time, built from the registry with the scope prefix
    again = MMENGINE_DATASETS.build(
        dict(type='g2sd.FashionMNIST', split='test', num_samples=30, pipeline=[])
    )
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.metainfo['classes'][0] == 'T-shirt/top'


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_format_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        FashionMNIST(root=str(tmp_path))
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (40, 28, 28)))
    _write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.arange(40) % 10)
    ds = FashionMNIST(root=str(tmp_path), pipeline=[dict(type='ToTensor')], num_samples=12)
    assert len(ds) == 12 and sorted(np.bincount(ds.labels).tolist()) == [1] * 8 + [2] * 2
    batch = default_collate([ds[i] for i in range(4)])
    assert batch['inputs'].shape == (4, 1, 28, 28) and batch['data_samples'].shape == (4,)
    with pytest.raises(FileNotFoundError, match='t10k-images-idx3-ubyte.gz'):
        FashionMNIST(root=str(tmp_path), split='test')
    with pytest.raises(ValueError, match="'val'"):
        FashionMNIST(root=str(tmp_path), split='val')
    with pytest.raises(ValueError, match='num_samples'):
        FashionMNIST(root=str(tmp_path), num_samples=41)
    bad = tmp_path / 'bad-idx.gz'
    with gzip.open(bad, 'wb') as f:
        f.write(b'\x00\x00\x08\x01\x00\x00\x00\x09abc')
    with pytest.raises(ValueError, match='header says'):
        read_idx(str(bad))


def test_balanced_subset_is_deterministic():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert balanced_subset(labels, 4).tolist() == [0, 1, 2, 3]
    assert balanced_subset(labels, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_pipeline_building_and_errors():
    pipe = build_pipeline(
        [
            dict(type='RandomResizedCrop', size=16, scale=[0.2, 1.0], interpolation='bicubic'),
            dict(type='RandomHorizontalFlip'),
            dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4),
            dict(type='g2sd.ToTensor'),
            dict(type='Normalize', mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
        ]
    )
    out = pipe(Image.new('RGB', (40, 30), color=(200, 10, 10)))
    assert out.shape == (3, 16, 16)
    crop = pipe.transforms[0]
    assert crop.interpolation.value == 'bicubic' and crop.scale == (0.2, 1.0)
    assert build_pipeline(None)(5) == 5
    with pytest.raises(ValueError, match=r"unknown transform 'Bogus'.*RandomResizedCrop"):
        build_transform(dict(type='Bogus'))
    with pytest.raises(ValueError, match="interpolation 'cubicle'"):
        build_transform(dict(type='Resize', size=8, interpolation='cubicle'))
    with pytest.raises(TypeError, match='RandomHorizontalFlip'):
        build_transform(dict(type='RandomHorizontalFlip', size=3))
    with pytest.raises(TypeError, match='list of transform configs'):
        build_pipeline(dict(type='ToTensor'))


def test_two_views_shapes_and_shared_crop():
    tv = TwoViews(
        common=[
            dict(type='RandomResizedCrop', size=12, scale=(0.2, 1.0)),
            dict(type='RandomHorizontalFlip'),
        ],
        teacher=[dict(type='ToTensor')],
        student=[
            dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4),
            dict(type='ToTensor'),
        ],
    )
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    views = tv(img)
    assert views.shape == (2, 3, 12, 12)
    plain = TwoViews(
        common=[dict(type='CenterCrop', size=10)],
        teacher=[dict(type='ToTensor')],
        student=[dict(type='ToTensor')],
    )(img)
    torch.testing.assert_close(plain[0], plain[1])  # same crop when the views add nothing
    batch = default_collate([dict(inputs=views, data_samples=0)] * 3)
    assert batch['inputs'].shape == (3, 2, 3, 12, 12)
    bad = TwoViews(teacher=[dict(type='ToTensor')])
    with pytest.raises(TypeError, match='student view must end with ToTensor'):
        bad(img)


def _make_tree(root) -> None:
    for cls, color in (('cat', (255, 0, 0)), ('dog', (0, 0, 255))):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new('RGB', (20, 16), color=color).save(root / cls / f'{i}.jpg')
    (root / 'dog' / 'notes.txt').write_text('not an image')


def test_image_folder_and_corrupt_image(tmp_path):
    root = tmp_path / 'train'
    _make_tree(root)
    ds = ImageFolder(str(root), pipeline=[dict(type='Resize', size=(8, 8)), dict(type='ToTensor')])
    assert len(ds) == 4 and ds.classes == ['cat', 'dog']
    assert [s[1] for s in ds.samples] == [0, 0, 1, 1]
    loader = DataLoader(ds, batch_size=4, collate_fn=default_collate)
    batch = next(iter(loader))
    assert batch['inputs'].shape == (4, 3, 8, 8) and batch['data_samples'].tolist() == [0, 0, 1, 1]

    bad = root / 'dog' / 'broken.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xe0 this is not a jpeg')
    ds = ImageFolder(str(root), pipeline=[dict(type='ToTensor')])
    idx = [i for i, (p, _) in enumerate(ds.samples) if p.endswith('broken.jpg')][0]
    with pytest.raises(CorruptImageError, match='broken.jpg'):
        ds[idx]
    truncated = root / 'cat' / 'trunc.jpg'
    truncated.write_bytes((root / 'cat' / '0.jpg').read_bytes()[:200])
    ds = ImageFolder(str(root))
    idx = [i for i, (p, _) in enumerate(ds.samples) if p.endswith('trunc.jpg')][0]
    with pytest.raises(CorruptImageError, match='trunc.jpg'):
        ds[idx]


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope'):
        ImageFolder(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no class sub-folders'):
        ImageFolder(str(tmp_path / 'empty'))


def test_image_folder_empty_class_folder_refused_or_kept(tmp_path, caplog):
    root = tmp_path / 'train'
    _make_tree(root)
    (root / 'bird').mkdir()  # empty: would become a class that never occurs
    (root / 'eel').mkdir()
    (root / 'eel' / 'readme.txt').write_text('no images here')
    with pytest.raises(ValueError, match=r"\['bird', 'eel'\] \(2 of 4\)"):
        ImageFolder(str(root))
    with caplog.at_level('WARNING', logger='g2sd.engine.datasets'):
        ds = ImageFolder(str(root), allow_empty_classes=True)
    assert ds.classes == ['bird', 'cat', 'dog', 'eel']
    assert [s[1] for s in ds.samples] == [1, 1, 2, 2]
    assert "['bird', 'eel']" in caplog.text
