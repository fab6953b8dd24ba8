"""g2sd.det: ViTDet Mask R-CNN with task-specific (FRS) distillation on mmdet 3.

Specific distillation for detection in G2SD (Huang et al., "Generic-to-Specific
Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771): the one g2sd ViT with
ViTDet's window attention, decomposed relative position and interpolated absolute position
(:class:`ViTDetBackbone`), detectron2's simple feature pyramid (:class:`SimpleFPN`,
:class:`LN2d`), FRS distillation of the pyramid maps and RPN objectness through
``g2sd.DistillModel`` (teacher forward :func:`rpn_teacher_forward`), and detectron2
checkpoints both ways (:func:`detectron2_to_mmdet`, :func:`mmdet_to_detectron2`, loader use
``'detector'``).

Installed as ``g2sd.det`` (``package_dir`` in setup.cfg); configs import it with
``custom_imports=dict(imports=['g2sd.engine', 'g2sd.distill', 'g2sd.det'])``. Importing it
registers, in the ``g2sd`` scope: ``g2sd.ViTDetBackbone``, ``g2sd.SimpleFPN``,
``g2sd.LN2d`` and the loader use ``'detector'``. It needs mmcv and mmdet.
"""

import g2sd.distill  # noqa: F401  (registers g2sd.DistillModel, its adapters and losses)
import g2sd.engine  # noqa: F401  (registers the distillation runner hooks)

from .backbone import ViTDetBackbone
from .convert import (
    detectron2_to_mmdet,
    is_detectron2_layout,
    mmdet_to_detectron2,
    resample_rel_pos_tables,
    select_detector,
)
from .distill import rpn_teacher_forward
from .neck import LN2d, SimpleFPN

__all__ = [
    'LN2d',
    'SimpleFPN',
    'ViTDetBackbone',
    'detectron2_to_mmdet',
    'is_detectron2_layout',
    'mmdet_to_detectron2',
    'resample_rel_pos_tables',
    'rpn_teacher_forward',
    'select_detector',
]
