"""Teacher forward of the FRS detection distillation (task-specific stage, mmdet 3).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) distils a ViTDet Mask R-CNN student from a fine-tuned teacher with the
FRS terms of Du et al. ("Distilling Object Detectors with Feature Richness", NeurIPS 2021),
as in ``G2SD_det_dis/tools/plain_distill_net.py``: per FPN level l, the richness mask
``m_l = max_anchors sigmoid(teacher RPN objectness)`` (detached) weights

* ``L_feat = sum_l sum m_l (F_t - A_l(F_s))^2 / sum m_l`` (weight 0.001,
  :class:`g2sd.MaskedFeatureMSELoss`, adapters :class:`g2sd.MultiLevelConvAdapter`),
* ``L_cls = sum_l sum m_l BCE(sigmoid(o_s), sigmoid(o_t)) / sum m_l`` (weight 0.1,
  :class:`g2sd.MaskedBCELoss`),

warmed up by ``g2sd.DistillWeightHook(warmup=500)``. The wrapper is the one
:class:`g2sd.DistillModel`; this module only provides how the teacher runs:
:func:`rpn_teacher_forward` (``teacher_forward='g2sd.det.rpn_teacher_forward'``), the
teacher's backbone + neck + RPN head, without losses, proposals or RoI heads. Its ``neck``
and ``rpn_head`` outputs are recorded by the wrapper's recorders; the student's come from
its own ``loss`` pass (recorded once, not recomputed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ['rpn_teacher_forward']


def rpn_teacher_forward(
    teacher: nn.Module, inputs: torch.Tensor, data_samples: Any = None
) -> tuple[tuple[torch.Tensor, ...], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Run an mmdet two-stage teacher as far as FRS needs: features and RPN outputs.

    ``teacher.extract_feat(inputs)`` (backbone + neck) then ``teacher.rpn_head(feats)``
    (mmdet ``RPNHead.forward``). :class:`g2sd.DistillModel` calls it in eval mode under
    ``torch.no_grad()`` and inside the optimizer wrapper's autocast, like the student.

    Args:
        teacher: An mmdet ``TwoStageDetector`` (``mmdet.MaskRCNN``) with a neck and an RPN
            head.
        inputs: (B, 3, H, W) preprocessed (padded, normalised) images, shared with the
            student.
        data_samples: Unused (the teacher computes no losses).

    Returns:
        ``(feats, (cls_scores, bbox_preds))``: the neck's maps (B, C, H_l, W_l) per level,
        the objectness logits (B, A, H_l, W_l) and box deltas (B, 4A, H_l, W_l) per level.

    Raises:
        TypeError: The teacher has no ``extract_feat`` or no ``rpn_head``.
    """
    del data_samples
    extract = getattr(teacher, 'extract_feat', None)
    rpn_head = getattr(teacher, 'rpn_head', None)
    if not callable(extract) or not isinstance(rpn_head, nn.Module):
        raise TypeError(
            'rpn_teacher_forward needs an mmdet two-stage detector teacher (extract_feat and '
            f'rpn_head), got {type(teacher).__name__}'
        )
    feats = extract(inputs)
    return feats, rpn_head(feats)
