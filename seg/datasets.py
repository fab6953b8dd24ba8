"""Fashion-MNIST canvases in the ADE20K layout: the offline proxy of the segmentation stage.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) evaluates task-specific distillation for semantic segmentation with UperNet
on ADE20K (150 classes, mIoU). ADE20K is not available offline, so the CPU-scale runs use
:class:`FashionMNISTSegDataset`: 64x64 black canvases with 1-4 real Fashion-MNIST items
pasted without overlap, written by ``tools/dataset/make_fmnist_ade.py`` in mmseg's ADE20K
layout (``images/{training,validation}/NNNNNN.png``, 1-channel gray;
``annotations/{training,validation}/NNNNNN.png``, uint8 label maps). It has 11 classes:
``background`` (label 0, evaluated like any other class, hence ``reduce_zero_label=False``,
unlike ADE20K) and the 10 Fashion-MNIST classes (label = Fashion-MNIST label + 1).
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Any

from mmseg.datasets import BaseSegDataset

from g2sd.engine.datasets import FASHION_MNIST_CLASSES
from g2sd.registry import DATASETS

__all__ = ['FashionMNISTSegDataset']

MAKE_COMMAND = 'python tools/dataset/make_fmnist_ade.py --out {out} --seed 0'


@DATASETS.register_module()
class FashionMNISTSegDataset(BaseSegDataset):
    """Fashion-MNIST canvases for semantic segmentation (11 classes, background included).

    Configs build it as ``dict(type='g2sd.FashionMNISTSegDataset', _scope_='mmseg',
    data_root='data/fmnist_ade/', data_prefix=dict(img_path='images/training',
    seg_map_path='annotations/training'), pipeline=[...])``; images load with
    ``LoadImageFromFile`` ``color_type='grayscale'`` (the toy backbones have ``in_chans=1``).

    Args:
        img_suffix: Image file suffix.
        seg_map_suffix: Label-map file suffix.
        reduce_zero_label: Keep False: label 0 is the evaluated background class.
        **kwargs: :class:`mmseg.datasets.BaseSegDataset` arguments (``data_root``,
            ``data_prefix``, ``pipeline``, ``test_mode``, ...).

    Raises:
        FileNotFoundError: (on loading) the image / annotation folder is missing, holds no
            ``img_suffix`` file, or an image has no label map; the message names the folder
            and the command that writes the set.
    """

    METAINFO = dict(
        classes=('background', *FASHION_MNIST_CLASSES),
        palette=[
            [0, 0, 0],  # background
            [31, 119, 180],
            [255, 127, 14],
            [44, 160, 44],
            [214, 39, 40],
            [148, 103, 189],
            [140, 86, 75],
            [227, 119, 194],
            [127, 127, 127],
            [188, 189, 34],
            [23, 190, 207],
        ],
    )

    def __init__(
        self,
        img_suffix: str = '.png',
        seg_map_suffix: str = '.png',
        reduce_zero_label: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )

    def _make_hint(self) -> str:
        """The command that writes the set under this dataset's ``data_root``."""
        root = self.data_root
        if not root:  # data_prefix holds full paths: OUT/images/<split>
            img_dir = self.data_prefix.get('img_path') or '.'
            root = osp.dirname(osp.dirname(osp.normpath(img_dir)))
        return MAKE_COMMAND.format(out=osp.normpath(root or '.'))

    def load_data_list(self) -> list[dict]:
        """The (image, label map) pairs, sorted by image path.

        Raises:
            FileNotFoundError: A folder is missing or empty, or a label map is missing.
        """
        img_dir = self.data_prefix.get('img_path', '')
        ann_dir = self.data_prefix.get('seg_map_path')
        hint = f'; write the set with `{self._make_hint()}`'
        for kind, folder in (('image', img_dir), ('annotation', ann_dir)):
            if folder is not None and not osp.isdir(folder):
                raise FileNotFoundError(
                    f'FashionMNISTSegDataset: {kind} folder {folder!r} not found{hint}'
                )
        if not any(e.name.endswith(self.img_suffix) for e in os.scandir(img_dir)):
            raise FileNotFoundError(
                f'FashionMNISTSegDataset: image folder {img_dir!r} holds no '
                f'{self.img_suffix!r} file{hint}'
            )
        data_list = super().load_data_list()
        missing = [
            d['seg_map_path']
            for d in data_list
            if 'seg_map_path' in d and not osp.isfile(d['seg_map_path'])
        ]
        if missing:
            raise FileNotFoundError(
                f'FashionMNISTSegDataset: {len(missing)} label map(s) missing in '
                f'{ann_dir!r} (first: {missing[0]!r}){hint}'
            )
        return data_list
