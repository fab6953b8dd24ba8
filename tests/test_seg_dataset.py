"""make_fmnist_ade.py and g2sd.FashionMNISTSegDataset: exact label maps, read by mmseg."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'dataset' / 'make_fmnist_ade.py'
CLASSES = (
    'background',
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
NUM = dict(training=6, validation=3)
SEED = 1
THRESHOLD = 20  # the tool's default --threshold


def _tool():
    spec = importlib.util.spec_from_file_location('make_fmnist_ade', TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make(out: Path, root: Path, *extra: str) -> int:
    argv = ['--out', str(out), '--root', str(root), '--num-train', '6', '--num-val', '3']
    return _tool().main([*argv, *extra])


@pytest.fixture(scope='module')
def made(tmp_path_factory: pytest.TempPathFactory, fmnist_root: Path) -> Path:
    out = tmp_path_factory.mktemp('ade') / 'fmnist_ade'
    assert _make(out, fmnist_root, '--seed', str(SEED)) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()
    }


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == 'L', (path, im.mode)
        return np.asarray(im)


def _read_idx(path: Path, header: int) -> np.ndarray:
    """Independent idx reader: skip the big-endian header, raw uint8 payload."""
    with gzip.open(path, 'rb') as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def test_help() -> None:
    r = subprocess.run([sys.executable, str(TOOL), '--help'], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ('--num-train', '--seed', '--canvas', '--threshold', '--overwrite', '--root'):
        assert flag in r.stdout, flag


def test_deterministic_by_seed(made: Path, tmp_path: Path, fmnist_root: Path) -> None:
    again = tmp_path / 'again'
    assert _make(again, fmnist_root, '--seed', str(SEED)) == 0
    a, b = _files(made), _files(again)
    assert len(a) == 2 * (6 + 3) + 1
    assert a == b
    other = tmp_path / 'other'
    assert _make(other, fmnist_root, '--seed', str(SEED + 1)) == 0
    c = _files(other)
    assert sorted(c) == sorted(a) and c != a
    assert c['images/training/000000.png'] != a['images/training/000000.png']


def test_layout_values_and_meta(made: Path) -> None:
    meta = json.loads((made / 'meta.json').read_text())
    assert tuple(meta['classes']) == CLASSES
    assert meta['args']['seed'] == SEED and 'out' not in meta['args']
    for split, n in NUM.items():
        names = [f'{i:06d}.png' for i in range(n)]
        assert sorted(p.name for p in (made / 'images' / split).iterdir()) == names
        assert sorted(p.name for p in (made / 'annotations' / split).iterdir()) == names
        pixels = np.zeros(11, np.int64)
        for name in names:
            img = _png(made / 'images' / split / name)
            ann = _png(made / 'annotations' / split / name)
            assert img.shape == ann.shape == (64, 64) and img.dtype == ann.dtype == np.uint8
            assert ann.max() <= 10 and (ann > 0).any()
            # Black background; label exactly on the pasted (bright) pixels.
            assert ((ann > 0) == (img > THRESHOLD)).all()
            assert (img[ann == 0] == 0).all()
            pixels += np.bincount(ann.ravel(), minlength=11)
        assert meta['counts'][split]['images'] == n
        assert meta['counts'][split]['pixels'] == pixels.tolist()
        assert 1 * n <= meta['counts'][split]['items'] <= 4 * n


@pytest.mark.parametrize('split_index', [0, 1], ids=['training', 'validation'])
def test_label_pixels_are_the_idx_silhouettes(
    made: Path, fmnist_root: Path, split_index: int
) -> None:
    """Canvas 0 recomputed from the raw idx images at the placements the canvas maker drew."""
    from g2sd.engine.canvas import CanvasSpec, make_canvas

    split, stem = (('training', 'train'), ('validation', 't10k'))[split_index]
    images = _read_idx(fmnist_root / f'{stem}-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28)
    labels = _read_idx(fmnist_root / f'{stem}-labels-idx1-ubyte.gz', 8)
    # Only the placement (index, size, offset) comes from the code under test: the first canvas
    # of split i uses a fresh default_rng([seed, i]).
    _, items = make_canvas(np.random.default_rng([SEED, split_index]), images, labels, CanvasSpec())
    assert items
    want_img = np.zeros((64, 64), np.uint8)
    want_ann = np.zeros((64, 64), np.uint8)
    for it in items:
        patch = np.asarray(
            Image.fromarray(images[it.index]).resize((it.size, it.size), Image.BILINEAR)
        )
        sil = patch > THRESHOLD
        ox, oy = it.offset
        assert 0 <= ox <= 64 - it.size and 0 <= oy <= 64 - it.size
        win = np.s_[oy : oy + it.size, ox : ox + it.size]
        assert (want_ann[win][sil] == 0).all(), 'silhouettes overlap'
        want_ann[win][sil] = int(labels[it.index]) + 1
        want_img[win][sil] = patch[sil]
    np.testing.assert_array_equal(_png(made / 'annotations' / split / '000000.png'), want_ann)
    np.testing.assert_array_equal(_png(made / 'images' / split / '000000.png'), want_img)


def test_refuses_existing_out_and_bad_input(
    made: Path, tmp_path: Path, fmnist_root: Path, capsys: pytest.CaptureFixture
) -> None:
    before = _files(made)
    assert _make(made, fmnist_root) == 1  # exists, no --overwrite
    assert 'exists' in capsys.readouterr().err
    assert _files(made) == before
    assert not list(made.parent.glob('.fmnist_ade.tmp-*'))
    # --overwrite replaces it (seed 0 differs from the fixture's SEED).
    copy = tmp_path / 'copy'
    shutil.copytree(made, copy)
    assert _make(copy, fmnist_root, '--overwrite', '--seed', '0') == 0
    assert sorted(_files(copy)) == sorted(before) and _files(copy) != before
    with pytest.raises(SystemExit):
        _tool().parse_args(['--min-size', '40', '--max-size', '20'])
    # Missing and corrupt idx files: one-line error, nothing written.
    empty = tmp_path / 'no_fmnist'
    empty.mkdir()
    assert _make(tmp_path / 'o1', empty) == 1
    assert 'not found' in capsys.readouterr().err and not (tmp_path / 'o1').exists()
    bad = tmp_path / 'bad_fmnist'
    bad.mkdir()
    for f in fmnist_root.glob('*-ubyte.gz'):
        (bad / f.name).write_bytes(gzip.compress(b'\x00\x00\x08\x03garbage'))
    assert _make(tmp_path / 'o2', bad) == 1
    err = capsys.readouterr().err
    assert 'corrupt' in err and str(bad) in err and not (tmp_path / 'o2').exists()
    (bad / 'train-images-idx3-ubyte.gz').write_bytes(b'not a gzip stream')
    assert _make(tmp_path / 'o3', bad) == 1
    assert 'corrupt' in capsys.readouterr().err
    assert not list(tmp_path.glob('.o*.tmp-*'))


def _build(made: Path, split: str, pipeline: list[dict], **kw):
    from mmengine.registry import DATASETS

    import g2sd.seg  # noqa: F401  (registers g2sd.FashionMNISTSegDataset)

    return DATASETS.build(
        dict(
            type='g2sd.FashionMNISTSegDataset',
            _scope_='mmseg',
            data_root=f'{made}/',
            data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
            pipeline=pipeline,
            **kw,
        )
    )


def test_mmseg_train_pipeline(made: Path) -> None:
    pipeline = [
        dict(type='LoadImageFromFile', color_type='grayscale'),
        dict(type='LoadAnnotations'),
        dict(type='RandomResize', scale=(128, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(48, 48), cat_max_ratio=0.75),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs'),
    ]
    ds = _build(made, 'training', pipeline)
    assert len(ds) == 6
    assert tuple(ds.metainfo['classes']) == CLASSES and len(ds.metainfo['palette']) == 11
    assert ds.metainfo['label_map'] is None and ds.metainfo['reduce_zero_label'] is False
    np.random.seed(0)  # mmcv's random transforms draw from numpy's global RNG
    shapes = set()
    for i in range(len(ds)):
        item = ds[i]
        x, gt = item['inputs'], item['data_samples'].gt_sem_seg.data
        assert x.dtype == torch.uint8 and x.shape[0] == 1 and max(x.shape[1:]) <= 48
        assert gt.shape == x.shape and int(gt.max()) <= 10
        shapes.add(tuple(x.shape))
    assert (1, 48, 48) in shapes


def test_iou_metric_over_the_label_maps(made: Path) -> None:
    from mmseg.evaluation import IoUMetric

    test_pipeline = [
        dict(type='LoadImageFromFile', color_type='grayscale'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs'),
    ]
    ds = _build(made, 'training', test_pipeline, test_mode=True)
    gts = [ds[i]['data_samples'].gt_sem_seg.data for i in range(len(ds))]
    for i, gt in enumerate(gts):  # no remapping on the way in
        raw = _png(made / 'annotations' / 'training' / f'{i:06d}.png')
        np.testing.assert_array_equal(gt[0].numpy(), raw)

    def score(preds: list[torch.Tensor]) -> dict:
        metric = IoUMetric(iou_metrics=['mIoU'])
        metric.dataset_meta = ds.metainfo
        metric.process(
            {},
            [dict(pred_sem_seg=dict(data=p), gt_sem_seg=dict(data=g)) for p, g in zip(preds, gts)],
        )
        return metric.compute_metrics(metric.results)

    perfect = score(gts)
    assert perfect['mIoU'] == 100.0 and perfect['aAcc'] == 100.0
    # All-background predictions: IoU(bg) = bg pixels / all pixels, 0 for every other class
    # present, classes absent from both are skipped (NaN).
    labels = np.concatenate([g.numpy().ravel() for g in gts])
    present = np.unique(labels)
    want = 100 * (labels == 0).mean() / len(present)
    got = score([torch.zeros_like(g) for g in gts])
    # Label 10 (Ankle boot) is present: a class count of 10 would drop it and change the mean.
    assert 10 in present and len(present) > 2 and got['mIoU'] == pytest.approx(want, abs=0.006)
    assert got['aAcc'] == pytest.approx(100 * (labels == 0).mean(), abs=0.006)


def test_missing_or_empty_folder(made: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'images/training.*make_fmnist_ade\.py --out'):
        _build(tmp_path / 'nowhere', 'training', [])
    empty = tmp_path / 'empty'
    (empty / 'images' / 'training').mkdir(parents=True)
    (empty / 'annotations' / 'training').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds no '\.png' file.*--out " + str(empty)):
        _build(empty, 'training', [])
    part = tmp_path / 'part'
    shutil.copytree(made, part)
    (part / 'annotations' / 'validation' / '000001.png').unlink()
    with pytest.raises(FileNotFoundError, match='1 label map'):
        _build(part, 'validation', [])
