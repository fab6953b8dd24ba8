"""Top-k accuracy for classification, including ImageNet robustness sets with class subsets.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) reports ImageNet top-1 and a robustness table on ImageNet-V2, ImageNet-A,
ImageNet-R and ImageNet-Sketch. A 1000-way model is evaluated on such a folder by mapping
the folder's class names to ImageNet-1k indices and restricting the scores to those columns:

* ImageNet-A / ImageNet-R (200 wnid folders): argmax over the 200 columns of their classes,
  exactly as the official ``eval.py`` of hendrycks/natural-adv-examples (``indices_in_1k``)
  and hendrycks/imagenet-r (``imagenet_r_mask``);
* ImageNet-Sketch and ImageNet val (1000 wnid folders): the identity;
* ImageNet-V2 (folders ``0`` .. ``999``): folder name = class index (an ``ImageFolder`` sorts
  them as strings, ``0, 1, 10, 100, ...``, so the labels must be mapped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import torch
from mmengine.evaluator import BaseMetric

from g2sd.registry import METRICS

from .imagenet_classes import IMAGENET_WNIDS

__all__ = ['TopKAccuracy', 'imagenet_class_indices', 'topk_correct']

_WNID = re.compile(r'^n\d{8}$')


def imagenet_class_indices(class_names: Sequence[str]) -> list[int]:
    """ImageNet-1k index of every class name of a folder dataset.

    Args:
        class_names: Folder names in the dataset's label order: WordNet ids
            (``n01440764``) or integer class indices (``'0'`` .. ``'999'``, ImageNet-V2).

    Returns:
        ``indices[j]`` = the 1000-class index of dataset class ``j``.

    Raises:
        ValueError: A name is neither a known wnid nor an integer in [0, 1000), or two
            classes map to the same index.
    """
    lookup = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    out: list[int] = []
    for name in class_names:
        name = str(name)
        if _WNID.match(name):
            if name not in lookup:
                raise ValueError(f'class folder {name!r} is not an ImageNet-1k WordNet id')
            out.append(lookup[name])
        elif name.isdigit() and int(name) < len(IMAGENET_WNIDS):
            out.append(int(name))
        else:
            raise ValueError(
                f'class folder {name!r} is neither an ImageNet-1k WordNet id (n########) nor a '
                'class index 0..999 (ImageNet-V2 layout)'
            )
    if len(set(out)) != len(out):
        raise ValueError(f'class folders map to repeated ImageNet indices: {list(class_names)}')
    return out


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """Per-sample hit flags: (B, K) scores, (B,) labels -> (B, len(topk)) bool.

    ``k`` larger than K counts every sample as a hit (as mmpretrain does).
    """
    maxk = min(max(topk), scores.shape[1])
    pred = scores.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(labels.view(-1, 1))
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1) for k in topk], dim=1)


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-k accuracy (in %) of ``dict(pred_score=(K,), gt_label=())`` predictions.

    Args:
        topk: The k values; keys ``top{k}``. Defaults to (1, 5).
        class_map: ``'none'``: labels index the score columns directly. ``'imagenet'``:
            the dataset's ``classes`` (folder names, from ``dataset_meta``) are mapped to
            ImageNet-1k indices with :func:`imagenet_class_indices` and the 1000-way scores
            are restricted to those columns (ImageNet-A / -R: 200 classes; -V2: integer
            folders; -Sketch / val: identity).
        collect_device: ``'cpu'`` or ``'gpu'`` for gathering results across ranks.
        prefix: Prefix of the metric names (e.g. ``'imagenet-a'``).
    """

    default_prefix = None

    def __init__(
        self,
        topk: Sequence[int] = (1, 5),
        class_map: Literal['none', 'imagenet'] = 'none',
        collect_device: str = 'cpu',
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not topk or any(not isinstance(k, int) or k < 1 for k in topk):
            raise ValueError(f'topk must be positive ints, got {topk!r}')
        if class_map not in ('none', 'imagenet'):
            raise ValueError(f"class_map must be 'none' or 'imagenet', got {class_map!r}")
        self.topk = topk
        self.class_map = class_map
        self._columns: torch.Tensor | None = None

    def _score_columns(self) -> torch.Tensor | None:
        if self.class_map == 'none':
            return None
        if self._columns is None:
            classes = (self.dataset_meta or {}).get('classes')
            if not classes:
                raise ValueError(
                    "class_map='imagenet' needs the dataset's class folder names in "
                    "dataset_meta['classes'] (g2sd.ImageFolder provides them)"
                )
            self._columns = torch.tensor(imagenet_class_indices(classes))
        return self._columns

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Store per-sample top-k hits of one batch."""
        if not data_samples:
            return
        scores = torch.stack([torch.as_tensor(d['pred_score']).float().cpu() for d in data_samples])
        labels = torch.stack([torch.as_tensor(d['gt_label']).long().cpu() for d in data_samples])
        columns = self._score_columns()
        if columns is not None:
            if scores.shape[1] <= int(columns.max()):
                raise ValueError(
                    f'the model has {scores.shape[1]} classes but the dataset folders map to '
                    f'ImageNet index {int(columns.max())}'
                )
            scores = scores[:, columns]
        if int(labels.max()) >= scores.shape[1] or int(labels.min()) < 0:
            raise ValueError(
                f'labels {labels.tolist()} out of range for {scores.shape[1]} score columns'
            )
        for row in topk_correct(scores, labels, self.topk):
            self.results.append(row)

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Mean hits x 100 per k: ``{'top1': ..., 'top5': ...}``."""
        hits = torch.stack(results).float()
        return {f'top{k}': float(hits[:, i].mean() * 100) for i, k in enumerate(self.topk)}
