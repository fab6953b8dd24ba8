"""The distillation wrapper of the specific-distillation (SD) stage.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) fine-tunes every student with a frozen teacher fine-tuned on the same task:
DeiT-style logit distillation for classification, FRS-style FPN / objectness distillation
for detection, channel-wise distillation of the logits for segmentation. One mmengine
``BaseModel``, :class:`DistillModel` (a :class:`~g2sd.distill.base.DistillerBase`), does all
three (design: mmrazor's ``SingleTeacherDistill`` concepts, mmdet's out-of-tree teacher,
torchdistill's module-path records):

* ``student``: a normal model of the host library (``g2sd.ViTClassifier``, an mmdet
  detector, an mmseg segmentor), a registered submodule, built in its own scope
  (``type='mmdet.MaskRCNN'``, or ``'mmdet::path/to/cfg.py'``); its data preprocessor is
  reused, so batch augmentations (mixup / cutmix, padding) happen once and the teacher sees
  exactly the student's inputs.
* ``teacher``: built and loaded strictly from ``teacher_checkpoint`` when the wrapper is
  built (a missing or wrong file fails before training starts), then frozen and kept outside
  the module tree (not in ``state_dict()``, the optimizer, DDP, ``init_weights`` or EMA
  copies; eval after ``model.train()``; moved by ``.to()``). It runs under
  ``torch.no_grad()`` (and the optimizer wrapper's autocast with ``--amp``), only as far as
  ``teacher_forward`` says (e.g. backbone + neck + RPN head of a detector).
* ``distill``: a list of items ``dict(student='backbone.head_dist', teacher='head',
  loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5))``. Each names a module of the student
  and of the teacher; :class:`~g2sd.distill.recorders.Recorder` captures their outputs during
  the distillation pass (and raises, naming the item, if one never ran), an optional
  trainable ``adapter`` maps the student record, and a registered loss
  (:mod:`g2sd.distill.losses`) compares them. Losses are returned as
  ``distill.loss_<name>`` (a tensor or a list of tensors) next to the student's own losses,
  times ``distill_weight_scale`` (set by ``g2sd.DistillWeightHook``);
  ``g2sd.StopDistillHook`` sets ``distillation_stopped``.
* ``predict`` / ``tensor`` use the student alone. A plain student checkpoint loads into the
  wrapper (keys get the ``student.`` prefix) and :meth:`DistillModel.export_student` returns
  the plain student (``g2sd.SaveStudentHook`` writes it at the end of the run).

Item keys (all but ``student`` / ``teacher`` / ``loss`` optional):

=================== ==========================================================================
``name``            loss key suffix (default: from the loss type, ``HardKDLoss`` -> ``hard_kd``)
``student``         dotted module path in the student (``''`` = the student's own output)
``teacher``         dotted module path in the teacher (``''`` = the teacher's output, i.e.
                    what ``teacher_forward`` returns)
``student_index``   int or list of ints selecting inside a tuple / list record (FPN levels)
``teacher_index``   same for the teacher record
``student_call``    which call of the student module, if it runs several times per pass (0)
``teacher_call``    same for the teacher module
``call``            sets both ``student_call`` and ``teacher_call``
``adapter``         config or module applied to the student record (trainable)
``loss``            loss config or module: ``loss(student, teacher, **extra)``
``extra``           ``{kwarg: dict(source='teacher'|'student', module=path, index=.., call=..)}``:
                    more records passed by keyword (e.g. ``mask_logits`` for FRS)
``gt``              pass the preprocessed ``data_samples`` as ``gt=`` (set automatically for
                    losses with ``requires_gt``, e.g. ``g2sd.NKDLoss``)
=================== ==========================================================================
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from g2sd.checkpoint import extract_state_dict, select_part
from g2sd.distill.base import DistillerBase, TeacherForward, build_model
from g2sd.distill.losses import loss_name
from g2sd.distill.recorders import Index, Recorder, select
from g2sd.registry import MODELS

__all__ = [
    'ConvAdapter',
    'DistillModel',
    'LinearAdapter',
    'MultiLevelConvAdapter',
    'plain_student_state_dict',
]

logger = logging.getLogger(__name__)

_STUDENT = 'student.'

#: Old argument names of ``g2sd.DistillModel`` (accepted for one release).
DEPRECATED_TEACHER_ARGS = {
    'teacher_ckpt': 'teacher_checkpoint',
    'teacher_ckpt_use': 'teacher_use',
    'teacher_ckpt_trusted': 'teacher_trusted',
}


def plain_student_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The student part of a wrapper state dict (``student.*`` keys, prefix removed).

    A state dict without ``student.`` keys is returned unchanged (already plain).
    """
    sd = extract_state_dict(sd)
    if not any(k.startswith(_STUDENT) for k in sd):
        return dict(sd)
    part, dropped = select_part(sd, _STUDENT)
    if dropped:
        logger.info('plain student: dropping wrapper parts %s', ', '.join(dropped))
    return part


@dataclass
class _Source:
    source: Literal['student', 'teacher']
    module: str
    index: Index = None
    call: int = 0


@dataclass
class _Item:
    name: str
    student: _Source
    teacher: _Source
    gt: bool = False
    extra: dict[str, _Source] = field(default_factory=dict)


_ITEM_KEYS = frozenset(
    {
        'name',
        'student',
        'teacher',
        'student_index',
        'teacher_index',
        'call',
        'student_call',
        'teacher_call',
        'adapter',
        'loss',
        'extra',
        'gt',
    }
)


def _call_index(value: Any, where: str) -> int:  # noqa: ANN401
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{where} must be an int >= 0, got {value!r}')
    return value


@MODELS.register_module()
class ConvAdapter(nn.Conv2d):
    """Trainable kxk conv (same padding) mapping student maps to the teacher's channels.

    G2SD's detection SD puts one 3x3 conv (256 -> 256, no activation) on each student FPN
    level. Shapes: (B, C_in, H, W) -> (B, C_out, H, W).

    Args:
        in_channels: Student channels.
        out_channels: Teacher channels.
        kernel_size: Odd kernel size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


@MODELS.register_module()
class MultiLevelConvAdapter(nn.Module):
    """One :class:`ConvAdapter` per pyramid level (G2SD detection SD, FRS).

    The official ``ADAP`` (``G2SD_det_dis/detectron2/modeling/distill/adap.py``): one
    kxk conv with bias per FPN level, no activation, PyTorch's default conv init. Keys
    ``convs.{l}.weight`` / ``convs.{l}.bias``. Shapes: a list / tuple of ``num_levels``
    maps (B, C_in, H_l, W_l) -> a list of (B, C_out, H_l, W_l).

    Args:
        in_channels: Student channels (G2SD: 256).
        out_channels: Teacher channels (G2SD: 256).
        num_levels: Number of levels (G2SD: 5, P2..P6).
        kernel_size: Odd kernel size (G2SD: 3).
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_levels: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f'num_levels must be an int >= 1, got {num_levels!r}')
        self.convs = nn.ModuleList(
            ConvAdapter(in_channels, out_channels, kernel_size) for _ in range(num_levels)
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Adapt each level with its own conv.

        Raises:
            TypeError: ``feats`` is not a list / tuple of maps.
            ValueError: ``feats`` has another number of levels.
        """
        if not isinstance(feats, (list, tuple)):
            raise TypeError(
                f'MultiLevelConvAdapter needs a list / tuple of per-level maps, got '
                f'{type(feats).__name__}'
            )
        if len(feats) != len(self.convs):
            raise ValueError(
                f'MultiLevelConvAdapter was built for {len(self.convs)} levels, got {len(feats)}'
            )
        return [conv(f) for conv, f in zip(self.convs, feats)]


@MODELS.register_module()
class LinearAdapter(nn.Linear):
    """Trainable linear map of the last dimension: (..., C_in) -> (..., C_out).

    Args:
        in_features: Student channels.
        out_features: Teacher channels.
    """


def _renamed_teacher_args(owner: str, given: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Map deprecated argument names to the new ones, with a logged DeprecationWarning."""
    out = dict(given)
    for old_name, value in old.items():
        if value is None:
            continue
        new_name = DEPRECATED_TEACHER_ARGS[old_name]
        if out.get(new_name) is not None:
            raise ValueError(f'{owner}: give {new_name!r} or the deprecated {old_name!r}, not both')
        msg = (
            f'{owner}: {old_name!r} is deprecated and will be removed in the next release; '
            f'use {new_name!r}'
        )
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        print_log(f'DeprecationWarning: {msg}', logger='current', level=logging.WARNING)
        out[new_name] = value
    return out


@MODELS.register_module()
class DistillModel(DistillerBase):
    """Student + frozen out-of-tree teacher + recorded-module distillation losses.

    See the module docstring for the ``distill`` items. G2SD classification SD::

        model = dict(
            type='g2sd.DistillModel',
            student=dict(type='g2sd.ViTClassifier', backbone=dict(
                type='g2sd.DistilledVisionTransformer', ...), ...),
            teacher=dict(type='g2sd.VisionTransformer', global_pool='avg', ...),
            teacher_checkpoint='mae_finetuned_vit_base.pth', teacher_use='encoder_teacher',
            student_loss_weight=0.5,
            distill=[dict(student='backbone.head_dist', teacher='head',
                          loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5))])

    Args:
        student: Config, ``'pkg::config.py'`` reference or module of the host-library model
            (``forward(inputs, data_samples, mode)``), built in its own scope.
        teacher: Config, reference or module of the teacher.
        teacher_checkpoint: Weights of the teacher (path or in-memory state dict), loaded
            strictly at build time.
        distill: The distillation items.
        teacher_use: ``'whole'`` (the teacher's own state dict, exactly: host-library
            teachers such as mmdet / mmseg checkpoints) or another loader use
            (``'encoder_teacher'`` for a ViT classifier teacher: MAE fine-tuned, timm or
            g2sd files).
        teacher_allow_missing: fnmatch patterns of teacher keys that may be missing.
        teacher_allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.
        teacher_trusted: The teacher file is an mmengine training checkpoint of ours.
        allow_random_teacher: Accept ``teacher_checkpoint=None`` (tests and benchmarks only).
        teacher_forward: How the teacher runs on ``inputs`` (see
            :meth:`~g2sd.distill.base.DistillerBase.run_teacher`): None, a method name
            (``'extract_feat'``), a callable ``fn(teacher, inputs, data_samples)`` or
            ``'pkg.mod:fn'``.
        student_loss_weight: Multiplier of the student's own losses (G2SD cls: 0.5).
        data_preprocessor: Defaults to the student's ``data_preprocessor``.
        init_cfg: mmengine ``init_cfg`` of the wrapper.
        teacher_ckpt: Deprecated name of ``teacher_checkpoint``.
        teacher_ckpt_use: Deprecated name of ``teacher_use``.
        teacher_ckpt_trusted: Deprecated name of ``teacher_trusted``.
    """

    def __init__(
        self,
        student: dict | str | nn.Module,
        teacher: dict | str | nn.Module,
        teacher_checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
        distill: Sequence[dict] = (),
        teacher_use: str | None = None,
        teacher_allow_missing: Sequence[str] = (),
        teacher_allow_unexpected: Sequence[str] = (),
        teacher_trusted: bool | None = None,
        allow_random_teacher: bool = False,
        teacher_forward: TeacherForward = None,
        student_loss_weight: float = 1.0,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
        teacher_ckpt: str | None = None,
        teacher_ckpt_use: str | None = None,
        teacher_ckpt_trusted: bool | None = None,
    ) -> None:
        args = _renamed_teacher_args(
            'DistillModel',
            dict(
                teacher_checkpoint=teacher_checkpoint,
                teacher_use=teacher_use,
                teacher_trusted=teacher_trusted,
            ),
            dict(
                teacher_ckpt=teacher_ckpt,
                teacher_ckpt_use=teacher_ckpt_use,
                teacher_ckpt_trusted=teacher_ckpt_trusted,
            ),
        )
        if student_loss_weight < 0:
            raise ValueError(f'student_loss_weight must be >= 0, got {student_loss_weight!r}')
        if teacher is None:
            raise ValueError('DistillModel needs a teacher (specific distillation)')
        if args['teacher_checkpoint'] is None and not allow_random_teacher:
            raise ValueError(
                'teacher_checkpoint is required: specific distillation needs a fine-tuned '
                'teacher (set allow_random_teacher=True only for tests / benchmarks)'
            )
        super().__init__(
            student,
            teacher,
            teacher_checkpoint=args['teacher_checkpoint'],
            teacher_use=args['teacher_use'] or 'whole',
            teacher_allow_missing=teacher_allow_missing,
            teacher_allow_unexpected=teacher_allow_unexpected,
            teacher_trusted=bool(args['teacher_trusted']),
            allow_random_teacher=allow_random_teacher,
            teacher_forward=teacher_forward,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg,
        )
        self.student_loss_weight = float(student_loss_weight)
        #: Multiplier of every distillation loss (set by ``g2sd.DistillWeightHook``).
        self.distill_weight_scale = 1.0
        #: When True, ``loss`` runs the student alone (set by ``g2sd.StopDistillHook``).
        self.distillation_stopped = False
        #: Predict with the teacher instead of the student (``g2sd.TeacherValHook``).
        self.predict_with_teacher = False
        self.adapters = nn.ModuleDict()
        self.distill_losses = nn.ModuleDict()
        self._items = [self._build_item(i, cfg) for i, cfg in enumerate(distill)]
        self._student_rec = Recorder(
            self.student,
            [s.module for it in self._items for s in self._sources(it, 'student')],
            'student',
        )
        self._teacher_rec = Recorder(
            self.teacher,
            [s.module for it in self._items for s in self._sources(it, 'teacher')],
            'teacher',
            wrap_root=False,
        )

    # ------------------------------------------------------------------ build
    @staticmethod
    def _sources(item: _Item, who: str) -> list[_Source]:
        all_sources = [item.student, item.teacher, *item.extra.values()]
        return [s for s in all_sources if s.source == who]

    def _build_item(self, i: int, cfg: Mapping[str, Any]) -> _Item:
        if not isinstance(cfg, Mapping):
            raise TypeError(f'distill[{i}] must be a dict, got {cfg!r}')
        unknown = set(cfg) - _ITEM_KEYS
        if unknown:
            raise ValueError(
                f'distill[{i}] has unknown keys {sorted(unknown)}; known: {sorted(_ITEM_KEYS)}'
            )
        for key in ('student', 'teacher', 'loss'):
            if key not in cfg:
                raise ValueError(f'distill[{i}] needs {key!r}, got {dict(cfg)!r}')
            if key != 'loss' and not isinstance(cfg[key], str):
                raise TypeError(f'distill[{i}].{key} must be a module path (str), got {cfg[key]!r}')
        if 'call' in cfg and ('student_call' in cfg or 'teacher_call' in cfg):
            raise ValueError(f'distill[{i}]: give call or student_call / teacher_call, not both')
        call = _call_index(cfg.get('call', 0), f'distill[{i}].call')
        s_call = _call_index(cfg.get('student_call', call), f'distill[{i}].student_call')
        t_call = _call_index(cfg.get('teacher_call', call), f'distill[{i}].teacher_call')
        if cfg['teacher'] == '' and t_call != 0:
            raise ValueError(f"distill[{i}]: the teacher output ('') has one call, got {t_call}")
        loss = build_model(cfg['loss'], f'distill[{i}].loss')
        name = cfg.get('name') or loss_name(loss)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f'distill[{i}].name must be an identifier, got {name!r}')
        if name in self.distill_losses:
            raise ValueError(f'two distill items are named {name!r}; give them distinct names')
        self.distill_losses[name] = loss
        if cfg.get('adapter') is not None:
            self.adapters[name] = build_model(cfg['adapter'], f'distill[{i}].adapter')
        extra: dict[str, _Source] = {}
        for kw, spec in dict(cfg.get('extra') or {}).items():
            if not isinstance(spec, Mapping) or spec.get('source') not in ('student', 'teacher'):
                raise ValueError(
                    f"distill[{i}].extra[{kw!r}] must be dict(source='student'|'teacher', "
                    f'module=..., index=..., call=...), got {spec!r}'
                )
            extra[kw] = _Source(
                spec['source'],
                spec.get('module', ''),
                spec.get('index'),
                _call_index(spec.get('call', 0), f'distill[{i}].extra[{kw!r}].call'),
            )
        return _Item(
            name=name,
            student=_Source('student', cfg['student'], cfg.get('student_index'), s_call),
            teacher=_Source('teacher', cfg['teacher'], cfg.get('teacher_index'), t_call),
            gt=bool(cfg.get('gt', getattr(loss, 'requires_gt', False))),
            extra=extra,
        )

    # ------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Initialise the student (and ``init_cfg``); never the teacher (it is loaded)."""
        if self.init_cfg:
            super().init_weights()
            return
        fn = getattr(self.student, 'init_weights', None)
        if callable(fn):
            fn()

    def export_student(self) -> dict[str, torch.Tensor]:
        """The plain student: ``student.export_student()`` if defined, else its state dict."""
        fn = getattr(self.student, 'export_student', None)
        if callable(fn):
            return fn()
        return {k: v.detach() for k, v in self.student.state_dict().items()}

    # ------------------------------------------------------------- forward
    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: Any = None,
        mode: Literal['loss', 'predict', 'tensor'] = 'tensor',
    ) -> Any:
        """``'loss'``: student + distillation losses; ``'predict'`` / ``'tensor'``: student."""
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode not in ('predict', 'tensor'):
            raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        if self.predict_with_teacher:
            return self._teacher_output(inputs, data_samples, mode)
        return self.student(inputs, data_samples, mode=mode)

    def _teacher_output(self, inputs: torch.Tensor, data_samples: Any, mode: str) -> Any:
        teacher = self.teacher
        if isinstance(teacher, BaseModel):
            with torch.no_grad():
                return teacher(inputs, data_samples, mode=mode)
        out = self.run_teacher(inputs, data_samples)
        fmt = getattr(self.student, 'format_predictions', None)
        if mode == 'predict':
            if not callable(fmt):
                raise TypeError(
                    f'cannot predict with a plain {type(teacher).__name__} teacher: the student '
                    f'{type(self.student).__name__} has no format_predictions(logits, data_samples)'
                )
            return fmt(out, data_samples)
        return out

    def loss(self, inputs: torch.Tensor, data_samples: Any) -> dict[str, Any]:
        """Student losses (times ``student_loss_weight``) plus ``distill.loss_*``.

        Args:
            inputs: The preprocessed (batch-augmented) inputs, shared by both models.
            data_samples: The preprocessed targets / data samples of the student.

        Raises:
            RuntimeError: A module named by an item did not run in this pass.
        """
        if self.distillation_stopped or not self._items:
            return self._scale_student(self.student(inputs, data_samples, mode='loss'))
        try:
            with self._teacher_rec.record():
                out = self.run_teacher(inputs, data_samples)
            if '' in self._teacher_rec.paths:
                self._teacher_rec.put('', out)
            with self._student_rec.record():
                losses = self.student(inputs, data_samples, mode='loss')
            self._check_fired()
            losses = self._scale_student(losses)
            losses.update(self.compute_distill_losses(data_samples))
        finally:
            self._teacher_rec.clear()
            self._student_rec.clear()
        return losses

    def _check_fired(self) -> None:
        silent = {
            'student': set(self._student_rec.silent()),
            'teacher': set(self._teacher_rec.silent()),
        }
        bad = [
            f'{item.name} ({src.source} {src.module!r})'
            for item in self._items
            for src in (item.student, item.teacher, *item.extra.values())
            if src.module in silent[src.source]
        ]
        if bad:
            raise RuntimeError(
                'distillation items whose module never ran in this pass: '
                + ', '.join(dict.fromkeys(bad))
                + ' (check the module paths and teacher_forward)'
            )

    def _scale_student(self, losses: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(losses, dict):
            raise TypeError(
                f"the student's loss mode must return a dict, got {type(losses).__name__}"
            )
        w = self.student_loss_weight
        if w == 1.0:
            return losses
        return {k: _scaled(v, w) if 'loss' in k else v for k, v in losses.items()}

    def _get(self, src: _Source) -> Any:
        rec = self._student_rec if src.source == 'student' else self._teacher_rec
        return select(rec.get(src.module, src.call), src.index)

    def compute_distill_losses(self, data_samples: Any) -> dict[str, Any]:
        """``{'distill.loss_<name>': weight_scale * loss(adapter(s), t, **extra)}`` per item.

        A loss may return a tensor or a list / tuple of tensors (e.g. one per FPN level;
        mmengine sums them). Subclasses with needs beyond the item table override this
        (records via ``self._student_rec.get(path)`` / ``self._teacher_rec.get(path)``).
        """
        out: dict[str, Any] = {}
        for item in self._items:
            s = self._get(item.student)
            t = self._get(item.teacher)
            if item.name in self.adapters:
                s = self.adapters[item.name](s)
            kwargs = {kw: self._get(src) for kw, src in item.extra.items()}
            if item.gt:
                kwargs['gt'] = data_samples
            value = self.distill_losses[item.name](s, t, **kwargs)
            out[f'distill.loss_{item.name}'] = _scaled(value, self.distill_weight_scale)
        return out


def _scaled(value: Any, w: float) -> Any:  # noqa: ANN401
    """``value * w`` for a tensor or each tensor of a list / tuple; other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value * w
    if isinstance(value, (list, tuple)):
        return type(value)(_scaled(v, w) for v in value)
    return value
