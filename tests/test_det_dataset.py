"""tools/dataset/make_fmnist_coco.py: deterministic, geometrically exact, read by mmdet."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'dataset' / 'make_fmnist_coco.py'
CLASSES = (
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


def _tool():
    spec = importlib.util.spec_from_file_location('make_fmnist_coco', TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make(out: Path, root: Path, *extra: str) -> int:
    argv = ['--out', str(out), '--root', str(root), '--num-train', '6', '--num-val', '4']
    return _tool().main([*argv, *extra])


@pytest.fixture(scope='module')
def made(tmp_path_factory: pytest.TempPathFactory, fmnist_root: Path) -> Path:
    out = tmp_path_factory.mktemp('coco') / 'fmnist_coco'
    assert _make(out, fmnist_root, '--seed', '3') == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_help() -> None:
    r = subprocess.run([sys.executable, str(TOOL), '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '--num-train' in r.stdout and '--seed' in r.stdout


def test_deterministic_by_seed(made: Path, tmp_path: Path, fmnist_root: Path) -> None:
    again = tmp_path / 'again'
    assert _make(again, fmnist_root, '--seed', '3') == 0
    a, b = _files(made), _files(again)
    assert sorted(a) == sorted(b) and len(a) == 6 + 4 + 2
    assert a == b
    other = tmp_path / 'other'
    assert _make(other, fmnist_root, '--seed', '4') == 0
    assert _files(other) != a


def test_layout_and_geometry(made: Path) -> None:
    from pycocotools import mask as mask_utils

    for split, n in (('train', 6), ('val', 4)):
        coco = json.loads((made / 'annotations' / f'instances_{split}.json').read_text())
        assert [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])] == list(
            CLASSES
        )
        assert len(coco['images']) == n
        assert {p.name for p in (made / split).iterdir()} == {
            im['file_name'] for im in coco['images']
        }
        per_image: dict[int, list[np.ndarray]] = {}
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 64 and y + h <= 64
            m = mask_utils.decode(ann['segmentation']).astype(bool)
            assert m.shape == (64, 64) and ann['area'] == int(m.sum()) > 0
            ys, xs = np.nonzero(m)
            # The box is the tight box of the silhouette: mask inside box, touching all sides.
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert 1 <= ann['category_id'] <= 10 and ann['iscrowd'] == 0
            per_image.setdefault(ann['image_id'], []).append(m)
        for img_id, masks in per_image.items():
            assert 1 <= len(masks) <= 4
            assert int(np.sum(masks, axis=0).max()) == 1, f'masks overlap in image {img_id}'
        # The mask covers exactly the bright pixels of the canvas (black background).
        from PIL import Image

        im0 = coco['images'][0]
        arr = np.asarray(Image.open(made / split / im0['file_name']))
        assert arr.shape == (64, 64, 3) and (arr[..., 0] == arr[..., 2]).all()
        union = np.any(per_image.get(im0['id'], [np.zeros((64, 64), bool)]), axis=0)
        assert (arr[..., 0][~union] == 0).all() and (arr[..., 0][union] > 20).all()


def test_mmdet_coco_dataset_reads_it(made: Path) -> None:
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    ds = CocoDataset(
        data_root=str(made),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        ],
    )
    coco = json.loads((made / 'annotations' / 'instances_val.json').read_text())
    assert len(ds) == len({a['image_id'] for a in coco['annotations']})
    item = ds[0]
    assert item['img'].shape == (64, 64, 3)
    anns = [a for a in coco['annotations'] if a['image_id'] == coco['images'][0]['id']]
    labels = sorted(a['category_id'] - 1 for a in anns)
    assert sorted(item['gt_bboxes_labels'].tolist()) == labels
    assert item['gt_masks'].to_ndarray().shape == (len(anns), 64, 64)


def test_refuses_existing_out_and_bad_args(made: Path, fmnist_root: Path) -> None:
    before = _files(made)
    assert _make(made, fmnist_root) == 1  # exists, no --overwrite
    assert _files(made) == before
    with pytest.raises(SystemExit):
        _tool().parse_args(['--min-size', '40', '--max-size', '20'])
    assert not list(made.parent.glob('.fmnist_coco.tmp-*'))
