"""g2sd.seg: UperNet segmentation with task-specific (CWD) distillation on mmseg 1.

Specific distillation for semantic segmentation in G2SD (Huang et al., "Generic-to-Specific
Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771): the one g2sd ViT with the
official BEiT-style options (class token, per-block relative position bias, layer scale;
:class:`SegViTBackbone`) under mmseg's ``Feature2Pyramid`` + ``UPerHead`` + ``FCNHead``,
channel-wise distillation (``g2sd.ChannelWiseDivergence``, Shu et al., ICCV 2021) of the decode
head's logits through ``g2sd.DistillModel`` (teacher forward :func:`decode_teacher_forward`),
mmseg / official BEiT-layout checkpoints both ways (:func:`mmseg_to_g2sd`,
:func:`g2sd_to_mmseg`, :func:`beit_to_g2sd`, loader use ``'segmentor'``) and the offline
ADE-layout proxy set (:class:`FashionMNISTSegDataset`, ``tools/dataset/make_fmnist_ade.py``).

Installed as ``g2sd.seg`` (``package_dir`` in setup.cfg); configs import it with
``custom_imports=dict(imports=['g2sd.engine', 'g2sd.distill', 'g2sd.seg'])``. Importing it
registers, in the ``g2sd`` scope: ``g2sd.SegViTBackbone``, ``g2sd.FashionMNISTSegDataset`` and
the loader use ``'segmentor'``. It needs mmcv and mmseg.
"""

import g2sd.distill  # noqa: F401  (registers g2sd.DistillModel, its adapters and losses)
import g2sd.engine  # noqa: F401  (registers the distillation runner hooks)

from .backbone import SegViTBackbone
from .convert import (
    beit_to_g2sd,
    g2sd_to_mmseg,
    is_beit_layout,
    is_mmseg_vit_layout,
    mmseg_to_g2sd,
    select_segmentor,
)
from .datasets import FashionMNISTSegDataset
from .distill import decode_teacher_forward

__all__ = [
    'FashionMNISTSegDataset',
    'SegViTBackbone',
    'beit_to_g2sd',
    'decode_teacher_forward',
    'g2sd_to_mmseg',
    'is_beit_layout',
    'is_mmseg_vit_layout',
    'mmseg_to_g2sd',
    'select_segmentor',
]
