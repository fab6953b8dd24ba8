"""Teacher forward of the CWD segmentation distillation (task-specific stage, mmseg 1).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) distils a UperNet ViT student from a fine-tuned UperNet teacher with
channel-wise distillation (CWD, Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021), as in ``G2SD_seg_dis/src/distillation/distillers/
segmentation_distiller.py`` and ``losses/cwd.py``:

* the distilled maps are the outputs of the decode head's ``conv_seg``, the K-class logits
  (N, K, H/4, W/4) at the decoder's resolution, *before* the upsampling to the image size;
* ``L = w * tau^2 / (N K) * sum_{n, k, hw} -p^T log p^S`` with ``p = softmax`` over the H W
  positions of each channel (:class:`g2sd.ChannelWiseDivergence`, the official
  cross-entropy form), tau 1, weight **3** as the authors ran it (``run.sh``: ``--options
  weight=3. tau=1``; their config files say 10);
* ``L_total = CE(decode head) + 0.4 CE(auxiliary head) + L``.

The wrapper is the one :class:`g2sd.DistillModel`; this module only provides how the
teacher runs: :func:`decode_teacher_forward`
(``teacher_forward='g2sd.seg.decode_teacher_forward'``), the teacher's backbone + neck +
decode head, in eval mode, without gradients, in the caller's autocast (the optimizer
wrapper's), without auxiliary head or losses (the official distiller also computes and
discards the teacher's losses; skipping them changes nothing but the cost). The student's
logits are recorded from its own training pass (one ``conv_seg`` call, not recomputed).
Config item::

    dict(name='cwd', student='decode_head.conv_seg', teacher='decode_head.conv_seg',
         loss=dict(type='g2sd.ChannelWiseDivergence', tau=1.0, loss_weight=3.0))

The official alternative, ``configs/distill/distill_kl.py``, is
:class:`g2sd.PixelWiseKLDivergence` on the same records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ['decode_teacher_forward']


def decode_teacher_forward(
    teacher: nn.Module, inputs: torch.Tensor, data_samples: Any = None
) -> torch.Tensor:
    """Run an mmseg encoder-decoder teacher as far as CWD needs: the decode head's logits.

    ``teacher.decode_head(teacher.extract_feat(inputs))`` (backbone + neck, then mmseg
    ``BaseDecodeHead.forward``, which ends with ``conv_seg``). :class:`g2sd.DistillModel`
    calls it in eval mode under ``torch.no_grad()`` and inside the optimizer wrapper's
    autocast, like the student. The auxiliary head never runs.

    Args:
        teacher: An mmseg ``EncoderDecoder`` (with ``extract_feat`` and ``decode_head``).
        inputs: (B, C, H, W) preprocessed (normalised, padded) images, shared with the
            student.
        data_samples: Unused (the teacher computes no losses).

    Returns:
        (B, K, H', W') logits at the decode head's resolution (H / 4 for the paper's UperNet
        on a patch-16 ViT), not resized to the input.

    Raises:
        TypeError: The teacher has no ``extract_feat`` or no ``decode_head``.
    """
    del data_samples
    extract = getattr(teacher, 'extract_feat', None)
    decode_head = getattr(teacher, 'decode_head', None)
    if not callable(extract) or not isinstance(decode_head, nn.Module):
        raise TypeError(
            'decode_teacher_forward needs an mmseg encoder-decoder teacher (extract_feat and '
            f'decode_head), got {type(teacher).__name__}'
        )
    return decode_head(extract(inputs))
