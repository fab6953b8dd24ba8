"""Robustness-set evaluation: class lists, folder-name mapping, top-k on 200-class subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from g2sd.cls import TopKAccuracy, imagenet_class_indices, topk_correct
from g2sd.cls.imagenet_classes import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
from g2sd.engine.datasets import ImageFolder

# indices_in_1k of hendrycks/natural-adv-examples eval.py (keys of thousand_k_to_200 != -1).
OFFICIAL_A = [
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96,
    97, 99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254,
    277, 283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319,
    323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386, 397, 400, 401, 402,
    404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472,
    483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569,
    572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677,
    682, 684, 687, 701, 704, 719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779,
    780, 786, 792, 797, 802, 803, 804, 813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850,
    859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943, 945,
    947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
]  # fmt: skip
# imagenet_r_indices from the comment in hendrycks/imagenet-r eval.py.
OFFICIAL_R = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99,
    100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162,
    163, 171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247,
    250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296,
    299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341,
    344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413,
    414, 425, 428, 430, 435, 437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483,
    487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637,
    657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833,
    847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945, 947,
    948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
]  # fmt: skip


def test_class_lists_match_official_eval_scripts() -> None:
    assert len(IMAGENET_WNIDS) == len(set(IMAGENET_WNIDS)) == 1000
    assert list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert IMAGENET_WNIDS[0] == 'n01440764' and IMAGENET_WNIDS[-1] == 'n15075141'
    assert len(OFFICIAL_A) == len(OFFICIAL_R) == 200
    assert imagenet_class_indices(sorted(IMAGENET_A_WNIDS)) == OFFICIAL_A
    assert imagenet_class_indices(sorted(IMAGENET_R_WNIDS)) == OFFICIAL_R


def test_folder_name_mapping() -> None:
    assert imagenet_class_indices(['n01440764', 'n01443537', 'n15075141']) == [0, 1, 999]
    # ImageNet-V2 folders, in ImageFolder's (string) order.
    assert imagenet_class_indices(['0', '1', '10', '100', '2']) == [0, 1, 10, 100, 2]
    with pytest.raises(ValueError, match='not an ImageNet-1k WordNet id'):
        imagenet_class_indices(['n99999999'])
    with pytest.raises(ValueError, match='neither'):
        imagenet_class_indices(['cat'])
    with pytest.raises(ValueError, match='neither'):
        imagenet_class_indices(['1000'])


def make_tree(root: Path, classes: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f'{i}.png')
    return root


def run_metric(dataset: ImageFolder, scores: torch.Tensor, **kw) -> dict[str, float]:
    metric = TopKAccuracy(topk=(1, 2), **kw)
    metric.dataset_meta = dataset.metainfo
    labels = [dataset[i]['data_samples'] for i in range(len(dataset))]
    preds = [dict(pred_score=s, gt_label=torch.tensor(y)) for s, y in zip(scores, labels)]
    metric.process({}, preds)
    return metric.evaluate(len(preds))


def test_imagenet_a_subset_on_fake_tree(tmp_path: Path) -> None:
    # Three ImageNet-A classes (1k indices 6, 11, 988), two images each.
    wnids = ['n01498041', 'n01531178', 'n12267677']
    ds = ImageFolder(str(make_tree(tmp_path / 'imagenet-a', wnids)))
    assert ds.metainfo['classes'] == tuple(wnids)
    scores = torch.zeros(len(ds), 1000)
    targets_1k = [6, 6, 11, 11, 988, 988]
    for i, t in enumerate(targets_1k):
        scores[i, 500] = 10.0  # a class outside the subset wins over all 1000 classes
        scores[i, t] = 5.0  # the right class wins among the subset's columns
        scores[i, 11 if t != 11 else 6] = 4.0  # runner-up inside the subset
    scores[5, 6] = 6.0  # last image: a wrong subset class ranks first, the right one second
    res = run_metric(ds, scores, class_map='imagenet')
    assert res['top1'] == pytest.approx(100 * 5 / 6)
    assert res['top2'] == pytest.approx(100.0)
    # Without the subset mapping the labels would index the wrong columns.
    assert run_metric(ds, scores)['top1'] == 0.0


def test_imagenet_v2_integer_folders(tmp_path: Path) -> None:
    ds = ImageFolder(str(make_tree(tmp_path / 'v2', ['0', '1', '10', '2'], per_class=1)))
    assert ds.metainfo['classes'] == ('0', '1', '10', '2')  # string order
    scores = torch.zeros(4, 1000)
    for i, c in enumerate([0, 1, 10, 2]):
        scores[i, c] = 1.0
    assert run_metric(ds, scores, class_map='imagenet')['top1'] == 100.0


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match='class_map'):
        TopKAccuracy(class_map='sketch')
    m = TopKAccuracy(class_map='imagenet')
    m.dataset_meta = {}
    with pytest.raises(ValueError, match='dataset_meta'):
        m.process({}, [dict(pred_score=torch.zeros(1000), gt_label=torch.tensor(0))])


def test_topk_correct_literal() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    hits = topk_correct(scores, labels, (1, 2, 5))
    assert hits.tolist() == [[False, True, True], [True, True, True], [False, False, True]]
