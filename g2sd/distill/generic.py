"""Generic (task-agnostic) distillers with one interface.

* :class:`G2SDDistiller` — G2SD generic distillation (Huang et al., "Generic-to-Specific
  Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771): the student's
  light decoder, through a 2-layer MLP projector, regresses the frozen MAE teacher's
  decoder tokens after its first ``k`` blocks (LayerNorm without affine), Smooth-L1
  (beta 2) over cls + visible + masked tokens, one random mask shared by both.
* :class:`DMAEDistiller` — D-MAE / D2-MAE (Wang et al., "A Closer Look at
  Self-Supervised Lightweight Vision Transformers", ICML 2023): MAE pixel loss plus MSE
  between pre-softmax attention logits of the last blocks, heads mapped by a 1x1 conv.
* :class:`TinyMIMDistiller` — TinyMIM (Ren et al., CVPR 2023): Q-K and V-V relation
  distillation without masking.
* :class:`MAEPretrainer` — plain MAE pre-training (He et al., CVPR 2022), the baseline.

Every distiller is a :class:`~g2sd.distill.base.DistillerBase` (an mmengine ``BaseModel``
named directly by configs) whose ``loss(imgs)`` returns a dict of losses (keys ``loss_*``;
``forward(inputs, data_samples, mode='loss')`` returns it), whose frozen ``teacher`` lives
outside the module tree, and whose ``export_student()`` returns a plain encoder state dict
(timm / MAE keys).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from g2sd.distill.base import DistillerBase
from g2sd.distill.losses import (
    LOSS_TYPES,
    attention_logit_mse,
    attention_logits,
    feature_regression_loss,
    layer_norm_target,
    relation_kl,
    relation_logits,
)
from g2sd.models.mae import MaskedAutoencoderViT
from g2sd.models.vit import QKV, Mlp, VisionTransformer
from g2sd.registry import MODELS

__all__ = [
    'BaseGenericDistiller',
    'DMAEDistiller',
    'G2SDDistiller',
    'MAEPretrainer',
    'QKVProbe',
    'TinyMIMDistiller',
]

logger = logging.getLogger(__name__)

_DECODER_PREFIXES = ('decoder_', 'mask_token')


def _check_mask_ratio(mask_ratio: float) -> None:
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f'mask_ratio must be in (0, 1), got {mask_ratio}')


class BaseGenericDistiller(DistillerBase):
    """A generic distiller: student + optional frozen teacher, an mmengine ``BaseModel``.

    Configs name it directly (``model=dict(type='g2sd.G2SDDistiller', student=...,
    teacher=..., teacher_checkpoint=...)``). Subclasses implement :meth:`loss`.

    Args:
        student: Student config (``type='g2sd.MaskedAutoencoderViT'`` or
            ``'g2sd.VisionTransformer'``) or module.
        teacher: Teacher config or module; None for teacher-free pre-training.
        teacher_checkpoint: Teacher weights (path or in-memory state dict), loaded strictly
            with the loader use ``teacher_use``.
        teacher_use: Loader use (``'mae_teacher'`` needs the MAE decoder,
            ``'encoder_teacher'`` an encoder); each distiller sets its own default.
        allow_random_teacher: Accept a teacher without checkpoint (tests and smoke runs
            only; a random teacher distils nothing).
        **kwargs: ``teacher_allow_missing``, ``teacher_allow_unexpected``,
            ``teacher_trusted``, ``data_preprocessor`` (default mmengine's
            ``BaseDataPreprocessor``), ``init_cfg``: see
            :class:`~g2sd.distill.base.DistillerBase`.
    """

    def __init__(
        self,
        student: dict | nn.Module,
        teacher: dict | nn.Module | None = None,
        teacher_checkpoint: str | Mapping[str, Any] | None = None,
        teacher_use: str = 'mae_teacher',
        allow_random_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        if 'teacher_forward' in kwargs:
            raise ValueError(
                f'{type(self).__name__} runs the teacher parts its loss needs itself; '
                'teacher_forward is an option of g2sd.DistillModel'
            )
        super().__init__(
            student,
            teacher,
            teacher_checkpoint=teacher_checkpoint,
            teacher_use=teacher_use,
            allow_random_teacher=allow_random_teacher,
            **kwargs,
        )

    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: Any = None,
        mode: Literal['loss', 'tensor', 'predict'] = 'loss',
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Dispatch on ``mode`` (mmengine contract).

        Args:
            inputs: (B, C, H, W) normalised images, or (B, 2, C, H, W) two views
                (``[:, 0]`` teacher view, ``[:, 1]`` student view).
            data_samples: Labels; unused.
            mode: ``'loss'``: the dict of losses of :meth:`loss`; ``'tensor'``: student
                features (``student.forward_features`` on the student view); ``'predict'``
                is not defined for pre-training.
        """
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'tensor':
            x = inputs[:, 1] if inputs.ndim == 5 else inputs
            fwd = getattr(self.student, 'forward_features', None)
            return fwd(x) if callable(fwd) else self.student(x)
        if mode == 'predict':
            raise NotImplementedError(
                f"{type(self).__name__} has no 'predict' mode: generic distillation has no "
                'evaluation metric. Evaluate the exported student with a cls/det/seg config '
                'instead, and leave val_dataloader / val_cfg / val_evaluator unset for '
                'pre-training.'
            )
        raise ValueError(f"mode must be 'loss', 'tensor' or 'predict', got {mode!r}")

    def loss(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distiller's losses (keys ``loss_*``) on a batch of images."""
        raise NotImplementedError

    def export_student(self) -> dict[str, torch.Tensor]:
        """Plain student encoder state dict (timm / MAE encoder keys, no decoder)."""
        return {
            k: v.detach().clone()
            for k, v in self.student.state_dict().items()
            if not k.startswith(_DECODER_PREFIXES)
        }

    @staticmethod
    def _check_same_grid(student: VisionTransformer, teacher: VisionTransformer) -> None:
        if student.patch_embed.patch_size != teacher.patch_embed.patch_size:
            raise ValueError(
                f'student patch size {student.patch_embed.patch_size} differs from teacher '
                f'{teacher.patch_embed.patch_size}; they must share one mask'
            )
        if student.patch_embed.grid_size != teacher.patch_embed.grid_size:
            raise ValueError(
                f'student grid {student.patch_embed.grid_size} differs from teacher grid '
                f'{teacher.patch_embed.grid_size}'
            )


@MODELS.register_module(name='G2SDDistiller')
class G2SDDistiller(BaseGenericDistiller):
    """G2SD generic distillation from an MAE teacher's decoder features.

    Args:
        student: MAE student config (``pixel_head=False``: its pixel head is never used).
        teacher: MAE teacher config (with decoder).
        teacher_checkpoint: MAE checkpoint *with decoder* (e.g. MAE's
            ``mae_pretrain_vit_base_full.pth``); an encoder-only file is refused.
        mask_ratio: Shared mask ratio.
        target_block: k, the number of teacher decoder blocks run; the target is the
            residual stream after block k (no decoder norm).
        loss_type: ``'smooth_l1'``, ``'mse'`` or ``'l1'``.
        beta: Smooth-L1 threshold.
        token_set: ``'all'`` (cls + visible + masked, the paper) or ``'masked'``.
        student_decoder_blocks: Student decoder blocks run (default all).
        projector_hidden: Hidden width of the 2-layer projector (default teacher width).
        target_norm: Normalise targets with LayerNorm without affine (eps 1e-6).
        loss_weight: Multiplier of the loss.
        allow_random_teacher: See :class:`BaseGenericDistiller`.
        **kwargs: Teacher loading options, ``data_preprocessor``, ``init_cfg``: see
            :class:`BaseGenericDistiller`.

    Shapes:
        imgs (B, C, H, W) -> target / prediction (B, 1 + N, C_teacher_dec).
    """

    def __init__(
        self,
        student: dict | nn.Module,
        teacher: dict | nn.Module,
        teacher_checkpoint: str | None = None,
        mask_ratio: float = 0.75,
        target_block: int = 4,
        loss_type: Literal['smooth_l1', 'mse', 'l1'] = 'smooth_l1',
        beta: float = 2.0,
        token_set: Literal['all', 'masked'] = 'all',
        student_decoder_blocks: int | None = None,
        projector_hidden: int | None = None,
        target_norm: bool = True,
        loss_weight: float = 1.0,
        allow_random_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f'loss_type must be one of {LOSS_TYPES}, got {loss_type!r}')
        if token_set not in ('all', 'masked'):
            raise ValueError(f"token_set must be 'all' or 'masked', got {token_set!r}")
        _check_mask_ratio(mask_ratio)
        if kwargs.get('teacher_use', 'mae_teacher') != 'mae_teacher':
            raise ValueError(
                f"G2SD needs teacher_use='mae_teacher' (the teacher's decoder), got "
                f'{kwargs["teacher_use"]!r}'
            )
        kwargs['teacher_use'] = 'mae_teacher'
        super().__init__(
            student,
            teacher,
            teacher_checkpoint,
            **kwargs,
            allow_random_teacher=allow_random_teacher,
        )
        s, t = self.student, self.teacher
        if not isinstance(s, MaskedAutoencoderViT) or not isinstance(t, MaskedAutoencoderViT):
            raise TypeError('G2SD needs MaskedAutoencoderViT student and teacher')
        if s.pixel_head:
            raise ValueError(
                'the G2SD student must be built with pixel_head=False: its decoder_norm and '
                'decoder_pred would never receive gradients'
            )
        if not 1 <= target_block <= t.decoder_depth:
            raise ValueError(
                f'target_block must be in [1, {t.decoder_depth}] (teacher decoder blocks), '
                f'got {target_block}'
            )
        if student_decoder_blocks is not None and not (
            1 <= student_decoder_blocks <= s.decoder_depth
        ):
            raise ValueError(
                f'student_decoder_blocks must be in [1, {s.decoder_depth}], '
                f'got {student_decoder_blocks}'
            )
        self._check_same_grid(s, t)
        self.mask_ratio = mask_ratio
        self.target_block = target_block
        self.loss_type = loss_type
        self.beta = beta
        self.token_set = token_set
        self.student_decoder_blocks = student_decoder_blocks
        self.target_norm = target_norm
        self.loss_weight = loss_weight
        t_dim = t.decoder_embed_dim
        self.projector = Mlp(s.decoder_embed_dim, projector_hidden or t_dim, t_dim)
        for m in self.projector.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def teacher_targets(self, imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Teacher decoder tokens after block k, (B, 1 + N, C_t), normalised if configured."""
        t = self.teacher
        with self.teacher_autocast():
            enc = t.forward_encoder(imgs, self.mask_ratio, noise)
            feats = t.forward_decoder(
                enc.latent, enc.ids_restore, num_blocks=self.target_block, predict=False
            )
        return layer_norm_target(feats) if self.target_norm else feats.float()

    def loss(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """imgs (B, C, H, W) -> ``{'loss_gd': scalar}``."""
        if imgs.ndim != 4:
            raise ValueError(f'G2SD expects images (B, C, H, W), got {tuple(imgs.shape)}')
        noise = self.student.make_noise(imgs)
        target = self.teacher_targets(imgs, noise)
        enc = self.student.forward_encoder(imgs, self.mask_ratio, noise)
        dec = self.student.forward_decoder(
            enc.latent, enc.ids_restore, num_blocks=self.student_decoder_blocks, predict=False
        )
        pred = self.projector(dec)
        weight = None
        if self.token_set == 'masked':
            weight = torch.cat([enc.mask.new_zeros(enc.mask.shape[0], 1), enc.mask], dim=1)
        loss = feature_regression_loss(pred, target, self.loss_type, self.beta, weight)
        return {'loss_gd': loss * self.loss_weight}


class QKVProbe(nn.Module):
    """``norm1`` + ``qkv`` of an attention block, used only for its q/k/v (D2-MAE's 13th block).

    Args:
        dim: Channels C.
        num_heads: Heads.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, dim * 3)

    def forward(self, x: torch.Tensor) -> QKV:
        """(B, N, C) -> QKV, each (B, heads, N, C / heads)."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        return QKV(*qkv.permute(2, 0, 3, 1, 4).unbind(0))


@MODELS.register_module(name='DMAEDistiller')
class DMAEDistiller(BaseGenericDistiller):
    """D-MAE: MAE pixel loss + attention-logit distillation from a frozen encoder.

    The teacher encoder runs on the student's visible tokens (same mask); the
    pre-softmax attention logits of the student's block ``student_block`` are mapped to
    the teacher's head count by a bias-free 1x1 conv and regressed (MSE) onto the
    teacher's block ``teacher_block`` logits.

    Args:
        student: MAE student config (with pixel head).
        teacher: Teacher encoder config (``g2sd.VisionTransformer``, ``num_classes=0``).
        teacher_checkpoint: Encoder weights (MAE encoder-only file is fine).
        mask_ratio: Mask ratio.
        attn_weight: Weight of the attention loss (1.0 in D-MAE).
        pixel_weight: Weight of the MAE pixel loss.
        student_block: Distilled student block index (negative from the end).
        teacher_block: Teacher block index (negative from the end).
        head_adapter: Learn the 1x1 head-mapping conv (required if head counts differ).
        d2: D2-MAE: the decoder is fed after ``d2_latent_block`` blocks and an extra
            attention-only block on top of the last block provides the distilled logits.
        d2_latent_block: Number of blocks before the decoder input in D2 mode (8).
        allow_random_teacher: See :class:`BaseGenericDistiller`.
        **kwargs: Teacher loading options, ``data_preprocessor``, ``init_cfg``: see
            :class:`BaseGenericDistiller`.
    """

    def __init__(
        self,
        student: dict | nn.Module,
        teacher: dict | nn.Module,
        teacher_checkpoint: str | None = None,
        mask_ratio: float = 0.75,
        attn_weight: float = 1.0,
        pixel_weight: float = 1.0,
        student_block: int = -1,
        teacher_block: int = -1,
        head_adapter: bool = True,
        d2: bool = False,
        d2_latent_block: int = 8,
        allow_random_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_mask_ratio(mask_ratio)
        kwargs.setdefault('teacher_use', 'encoder_teacher')
        super().__init__(
            student,
            teacher,
            teacher_checkpoint,
            allow_random_teacher=allow_random_teacher,
            **kwargs,
        )
        s, t = self.student, self.teacher
        if not isinstance(s, MaskedAutoencoderViT) or not s.pixel_head:
            raise TypeError('the D-MAE student must be a MaskedAutoencoderViT with pixel_head')
        if not isinstance(t, VisionTransformer):
            raise TypeError(f'the D-MAE teacher must be a VisionTransformer, got {type(t)}')
        self._check_same_grid(s, t)
        self.mask_ratio = mask_ratio
        self.attn_weight = attn_weight
        self.pixel_weight = pixel_weight
        self.teacher_block = teacher_block % t.depth
        self.d2 = d2
        if d2:
            if not 1 <= d2_latent_block <= s.depth:
                raise ValueError(
                    f'd2_latent_block must be in [1, {s.depth}], got {d2_latent_block}'
                )
            self.d2_latent_block = d2_latent_block
            self.d2_block = QKVProbe(s.embed_dim, s.blocks[-1].attn.num_heads)
            s_heads = self.d2_block.num_heads
        else:
            self.student_block = student_block % s.depth
            s_heads = s.blocks[self.student_block].attn.num_heads
        t_heads = t.blocks[self.teacher_block].attn.num_heads
        if not head_adapter and s_heads != t_heads:
            raise ValueError(
                f'student has {s_heads} heads and teacher {t_heads}: head_adapter=True is needed'
            )
        self.head_adapter = nn.Conv2d(s_heads, t_heads, 1, bias=False) if head_adapter else None

    def loss(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """imgs (B, C, H, W) -> ``{'loss_mae', 'loss_attn'}``."""
        if imgs.ndim != 4:
            raise ValueError(f'D-MAE expects images (B, C, H, W), got {tuple(imgs.shape)}')
        s, t = self.student, self.teacher
        noise = s.make_noise(imgs)
        with torch.no_grad(), self.teacher_autocast():
            tq = t.forward_block_qkv(imgs, self.teacher_block, self.mask_ratio, noise)
            t_logits = attention_logits(tq.q, tq.k)
        if self.d2:
            enc = s.forward_encoder(
                imgs, self.mask_ratio, noise, latent_block=self.d2_latent_block - 1
            )
            sq = self.d2_block(enc.prenorm)
        else:
            enc = s.forward_encoder(imgs, self.mask_ratio, noise, qkv_blocks=(self.student_block,))
            sq = enc.qkv[self.student_block]
        s_logits = attention_logits(sq.q, sq.k)
        if self.head_adapter is not None:
            s_logits = self.head_adapter(s_logits)
        pred = s.forward_decoder(enc.latent, enc.ids_restore)
        return {
            'loss_mae': s.forward_loss(imgs, pred, enc.mask) * self.pixel_weight,
            'loss_attn': attention_logit_mse(s_logits, t_logits) * self.attn_weight,
        }


@MODELS.register_module(name='TinyMIMDistiller')
class TinyMIMDistiller(BaseGenericDistiller):
    """TinyMIM relation distillation (no masking).

    Relations of the student's last block, softmax((a b^T) / sqrt(d)) for (a, b) in
    ``relations`` (``'qk'``, ``'vv'``), match the teacher block ``teacher_block``'s by KL.
    The student's last block must have the teacher's head count
    (``last_block_heads``). Parameters after the last block's qkv (attn.proj, norm2,
    mlp, final norm) get no gradient in TinyMIM; they are frozen here so DDP needs no
    ``find_unused_parameters``.

    Args:
        student: Student ``g2sd.VisionTransformer`` config (``num_classes=0``).
        teacher: Teacher ``g2sd.VisionTransformer`` config.
        teacher_checkpoint: Encoder weights (an MAE file or a previous TinyMIM student for
            sequential distillation).
        teacher_block: 1-based teacher block (12 of 12 for ViT-B, 18 of 24 for ViT-L);
            default its last.
        relations: Relation maps to distil.
        allow_random_teacher: See :class:`BaseGenericDistiller`.
        **kwargs: Teacher loading options, ``data_preprocessor``, ``init_cfg``: see
            :class:`BaseGenericDistiller`.

    Inputs:
        imgs (B, C, H, W) seen by both, or (B, 2, C, H, W): [:, 0] the teacher view and
        [:, 1] the student view (which adds colour jitter in TinyMIM).
    """

    def __init__(
        self,
        student: dict | nn.Module,
        teacher: dict | nn.Module,
        teacher_checkpoint: str | None = None,
        teacher_block: int | None = None,
        relations: Sequence[Literal['qk', 'vv']] = ('qk', 'vv'),
        allow_random_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault('teacher_use', 'encoder_teacher')
        super().__init__(
            student,
            teacher,
            teacher_checkpoint,
            allow_random_teacher=allow_random_teacher,
            **kwargs,
        )
        s, t = self.student, self.teacher
        if not isinstance(s, VisionTransformer) or not isinstance(t, VisionTransformer):
            raise TypeError('TinyMIM needs VisionTransformer student and teacher')
        bad = [r for r in relations if r not in ('qk', 'vv')]
        if bad or not relations:
            raise ValueError(
                f"relations must be a non-empty subset of ('qk', 'vv'), got {relations}"
            )
        self.relations = tuple(relations)
        self.teacher_block = t.depth if teacher_block is None else teacher_block
        if not 1 <= self.teacher_block <= t.depth:
            raise ValueError(f'teacher_block must be in [1, {t.depth}], got {teacher_block}')
        s_heads = s.blocks[-1].attn.num_heads
        t_heads = t.blocks[self.teacher_block - 1].attn.num_heads
        if s_heads != t_heads:
            raise ValueError(
                f"the student's last block has {s_heads} heads but teacher block "
                f'{self.teacher_block} has {t_heads}: build the student with '
                f'last_block_heads={t_heads} (TinyMIM)'
            )
        self._check_same_grid(s, t)
        last = s.blocks[-1]
        for m in (last.attn.proj, last.norm2, last.mlp, s.norm, s.fc_norm, s.head):
            if m is not None:
                m.requires_grad_(False)

    def loss(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """imgs (B, C, H, W) or (B, 2, C, H, W) -> ``{'loss_qk', 'loss_vv'}``."""
        if imgs.ndim == 5 and imgs.shape[1] == 2:
            t_img, s_img = imgs[:, 0], imgs[:, 1]
        elif imgs.ndim == 4:
            t_img = s_img = imgs
        else:
            raise ValueError(f'TinyMIM expects (B, C, H, W) or (B, 2, C, H, W), got {imgs.shape}')
        with torch.no_grad(), self.teacher_autocast():
            tq = self.teacher.forward_block_qkv(t_img, self.teacher_block - 1)
        sq = self.student.forward_block_qkv(s_img, self.student.depth - 1)
        losses = {}
        for rel in self.relations:
            a_s, b_s = (sq.q, sq.k) if rel == 'qk' else (sq.v, sq.v)
            a_t, b_t = (tq.q, tq.k) if rel == 'qk' else (tq.v, tq.v)
            s_log = relation_logits(a_s, b_s, a_s.shape[-1] ** -0.5)
            with torch.no_grad():
                t_log = relation_logits(a_t, b_t, a_t.shape[-1] ** -0.5)
            losses[f'loss_{rel}'] = relation_kl(s_log, t_log)
        return losses


@MODELS.register_module(name='MAEPretrainer')
class MAEPretrainer(BaseGenericDistiller):
    """Plain MAE pre-training (norm-pix loss on masked patches), the baseline.

    Args:
        student: MAE config (with pixel head).
        mask_ratio: Mask ratio.
        **kwargs: ``data_preprocessor``, ``init_cfg``: see :class:`BaseGenericDistiller`.
    """

    def __init__(self, student: dict | nn.Module, mask_ratio: float = 0.75, **kwargs: Any) -> None:
        _check_mask_ratio(mask_ratio)
        super().__init__(student, **kwargs)
        if not isinstance(self.student, MaskedAutoencoderViT) or not self.student.pixel_head:
            raise TypeError('MAE pre-training needs a MaskedAutoencoderViT with pixel_head=True')
        self.mask_ratio = mask_ratio

    def export_student(self) -> dict[str, torch.Tensor]:
        """The whole MAE (encoder + decoder): usable as a G2SD teacher and as a backbone."""
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def loss(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """imgs (B, C, H, W) -> ``{'loss_mae'}``."""
        loss, _, _ = self.student(imgs, self.mask_ratio)
        return {'loss_mae': loss}
