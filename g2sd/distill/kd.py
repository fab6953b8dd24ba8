"""The task-agnostic distillation wrapper of the specific-distillation (SD) stage.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) fine-tunes every student with a frozen teacher fine-tuned on the same task:
DeiT-style logit distillation for classification, FRS-style FPN / objectness distillation
for detection, channel-wise distillation of the logits for segmentation. One mmengine
``BaseModel`` does all three (design: mmrazor's ``SingleTeacherDistill`` concepts, mmdet's
out-of-tree teacher, torchdistill's module-path forward hooks):

* ``student``: a normal model of the host library (``g2sd.ViTClassifier``, an mmdet
  detector, an mmseg segmentor), a registered submodule; its data preprocessor is reused,
  so batch augmentations (mixup / cutmix, padding) happen once and the teacher sees exactly
  the student's inputs.
* ``teacher``: built from its config and loaded strictly from ``teacher_ckpt`` through
  :mod:`g2sd.checkpoint` when the wrapper is built (a missing or wrong file fails before
  training starts), then frozen and kept outside the module tree
  (:class:`~g2sd.distill.teacher.TeacherHolderMixin`: not in ``state_dict()``, the optimizer,
  DDP, ``init_weights`` or EMA copies; eval after ``model.train()``; moved by ``.to()``).
  It runs under ``torch.no_grad()`` (and the optimizer wrapper's autocast with ``--amp``).
* ``distill``: a list of items ``dict(student='backbone.head_dist', teacher='head',
  loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5))``. Each names a module of the student
  and of the teacher; forward hooks record their outputs only during the distillation pass
  ("KD hooks"), an optional trainable ``adapter`` maps the student record, and a registered
  loss (:mod:`g2sd.distill.kd_losses`) compares them. Losses are returned as
  ``distill.loss_<name>`` next to the student's own losses, times ``distill_weight_scale``
  (set by ``g2sd.DistillWeightHook``); ``g2sd.StopDistillHook`` sets
  ``distillation_stopped``.
* ``predict`` / ``tensor`` use the student alone. A plain student checkpoint loads into the
  wrapper (keys get the ``student.`` prefix) and :meth:`DistillModel.export_student` returns
  the plain student (``g2sd.SaveStudentHook`` writes it at the end of the run).

Item keys (all but ``student`` / ``teacher`` / ``loss`` optional):

=================== ==========================================================================
``name``            loss key suffix (default: from the loss type, ``HardKDLoss`` -> ``hard_kd``)
``student``         dotted module path in the student (``''`` = the student's own output)
``teacher``         dotted module path in the teacher (``''`` = the teacher's output)
``student_index``   int or list of ints selecting inside a tuple / list record (FPN levels)
``teacher_index``   same for the teacher record
``call``            which call of the module, if it runs several times per pass (default 0)
``adapter``         config or module applied to the student record (trainable)
``loss``            loss config or module: ``loss(student, teacher, **extra)``
``extra``           ``{kwarg: dict(source='teacher'|'student', module=path, index=..)}``:
                    more records passed by keyword (e.g. ``mask_logits`` for FRS)
``gt``              pass the preprocessed ``data_samples`` as ``gt=`` (set automatically for
                    losses with ``requires_gt``, e.g. ``g2sd.NKDLoss``)
=================== ==========================================================================
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from g2sd.checkpoint import (
    USES,
    CheckpointError,
    LoadReport,
    extract_state_dict,
    load_file,
    load_pretrained,
    load_state_dict_strict,
)
from g2sd.distill.kd_losses import loss_name
from g2sd.distill.teacher import TeacherHolderMixin, build_module
from g2sd.registry import MODELS

__all__ = [
    'ConvAdapter',
    'DistillModel',
    'LinearAdapter',
    'ModuleRecorder',
    'load_teacher_checkpoint',
    'plain_student_state_dict',
    'select',
]

logger = logging.getLogger(__name__)

Index = int | Sequence[int] | None
_STUDENT = 'student.'
_DETACHABLE_PREFIXES = ('student.', 'backbone.')


# --------------------------------------------------------------------- helpers
def select(record: Any, index: Index) -> Any:
    """Pick ``record[i][j]...`` for ``index=(i, j, ...)`` (an int is one level; None: as is)."""
    if index is None:
        return record
    for i in (index,) if isinstance(index, int) else tuple(index):
        try:
            record = record[i]
        except (IndexError, KeyError, TypeError) as err:
            raise ValueError(
                f'cannot index a {type(record).__name__} record with {i!r} (index {index!r})'
            ) from err
    return record


def _strip_shared_prefixes(
    sd: dict[str, torch.Tensor], model_keys: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Remove ``student.`` / ``backbone.`` when every checkpoint key and no model key has it."""
    changed = True
    while changed and sd:
        changed = False
        for p in _DETACHABLE_PREFIXES:
            if all(k.startswith(p) for k in sd) and not any(k.startswith(p) for k in model_keys):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
    return sd


def plain_student_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The student part of a wrapper state dict (``student.*`` keys, prefix removed).

    A state dict without ``student.`` keys is returned unchanged (already plain).
    """
    sd = extract_state_dict(sd)
    if not any(k.startswith(_STUDENT) for k in sd):
        return dict(sd)
    dropped = sorted({k.split('.', 1)[0] for k in sd if not k.startswith(_STUDENT)})
    if dropped:
        logger.info('plain student: dropping wrapper parts %s', ', '.join(dropped))
    return {k[len(_STUDENT) :]: v for k, v in sd.items() if k.startswith(_STUDENT)}


def load_teacher_checkpoint(
    teacher: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    use: str = 'whole',
    trusted: bool = False,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
) -> LoadReport:
    """Load a teacher strictly.

    ``student.`` (a teacher trained inside a distillation wrapper) and ``backbone.`` (a
    ``g2sd.ViTClassifier`` checkpoint loaded into a bare ViT) are removed first when every
    checkpoint key and no teacher key starts with them.

    Args:
        teacher: The built teacher.
        checkpoint: Path or loaded checkpoint / state dict.
        use: ``'whole'``: the teacher's own state dict, exactly (host-library teachers,
            e.g. mmdet / mmseg checkpoints); or a ``use`` of
            :func:`g2sd.checkpoint.load_pretrained` (``'encoder_teacher'`` for a ViT
            classifier teacher: MAE fine-tuned, timm or g2sd files).
        trusted: Read mmengine training checkpoints (see :func:`g2sd.checkpoint.load_file`).
        allow_missing: fnmatch patterns of teacher keys that may be missing.
        allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.

    Returns:
        The load report.

    Raises:
        CheckpointError: Missing / unreadable file or keys that do not fit.
        ValueError: Unknown ``use``.
    """
    if use != 'whole' and use not in USES:
        raise ValueError(f"teacher_ckpt_use must be 'whole' or one of {USES}, got {use!r}")
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        obj = load_file(source, trusted=trusted)
    elif isinstance(checkpoint, Mapping):
        source, obj = 'teacher state dict', checkpoint
    else:
        raise TypeError(f'teacher_ckpt must be a path or a mapping, got {type(checkpoint)}')
    sd = _strip_shared_prefixes(extract_state_dict(obj, source=source), list(teacher.state_dict()))
    if use == 'whole':
        return load_state_dict_strict(
            teacher,
            sd,
            allow_missing=allow_missing,
            allow_unexpected=allow_unexpected,
            what=f'teacher {type(teacher).__name__}',
            source=source,
        )
    try:
        return load_pretrained(
            teacher,
            sd,
            use=use,  # type: ignore[arg-type]
            allow_missing=allow_missing,
            allow_unexpected=allow_unexpected,
        )
    except CheckpointError as err:
        raise CheckpointError(f'teacher checkpoint {source}: {err}') from err


class ModuleRecorder:
    """Forward hooks on named sub-modules that record outputs only inside :meth:`record`.

    Args:
        model: Root module.
        paths: Dotted sub-module names (``''`` = the root).
        what: Name used in error messages.

    Raises:
        ValueError: A path names no sub-module (the message lists close names).
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], what: str) -> None:
        self.model = model
        self.paths = tuple(dict.fromkeys(paths))
        self.what = what
        self.records: dict[str, list[Any]] = {}
        for p in self.paths:
            self.module(p)

    def module(self, path: str) -> nn.Module:
        """The sub-module at ``path`` (clear error if absent)."""
        try:
            return self.model.get_submodule(path)
        except AttributeError as err:
            names = [n for n, _ in self.model.named_modules() if n]
            leaf = path.rsplit('.', 1)[-1]
            close = [n for n in names if leaf and leaf in n][:8] or names[:8]
            raise ValueError(
                f'{self.what} ({type(self.model).__name__}) has no module {path!r}; '
                f'modules with a similar name: {close}'
            ) from err

    @contextmanager
    def record(self) -> Iterator[dict[str, list[Any]]]:
        """Register the hooks, yield the fresh record dict, remove the hooks."""
        self.records = {p: [] for p in self.paths}
        handles = []
        try:
            for p in self.paths:
                store = self.records[p]
                handles.append(
                    self.module(p).register_forward_hook(
                        lambda _m, _i, out, store=store: store.append(out)
                    )
                )
            yield self.records
        finally:
            for h in handles:
                h.remove()

    def get(self, path: str, call: int = 0) -> Any:
        """Output of call ``call`` of the module at ``path`` in the last recording."""
        calls = self.records.get(path)
        if not calls:
            raise RuntimeError(
                f'{self.what} module {path!r} did not run during the distillation pass'
            )
        try:
            return calls[call]
        except IndexError as err:
            raise RuntimeError(
                f'{self.what} module {path!r} ran {len(calls)} time(s); call {call} requested'
            ) from err

    def clear(self) -> None:
        """Drop the recorded tensors (and their autograd graphs)."""
        self.records = {}


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
        'adapter',
        'loss',
        'extra',
        'gt',
    }
)


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
class LinearAdapter(nn.Linear):
    """Trainable linear map of the last dimension: (..., C_in) -> (..., C_out).

    Args:
        in_features: Student channels.
        out_features: Teacher channels.
    """


@MODELS.register_module()
class DistillModel(TeacherHolderMixin, BaseModel):
    """Student + frozen out-of-tree teacher + recorded-module distillation losses.

    See the module docstring for the ``distill`` items. G2SD classification SD::

        model = dict(
            type='g2sd.DistillModel',
            student=dict(type='g2sd.ViTClassifier', backbone=dict(
                type='g2sd.DistilledVisionTransformer', ...), ...),
            teacher=dict(type='g2sd.VisionTransformer', global_pool='avg', ...),
            teacher_ckpt='mae_finetuned_vit_base.pth', teacher_ckpt_use='encoder_teacher',
            student_loss_weight=0.5,
            distill=[dict(student='backbone.head_dist', teacher='head',
                          loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5))])

    Args:
        student: Config or module of the host-library model (``forward(inputs,
            data_samples, mode)``); built in the ``g2sd`` scope unless it sets ``_scope_``.
        teacher: Config or module of the teacher.
        teacher_ckpt: Weights of the teacher, loaded strictly at build time.
        distill: The distillation items.
        teacher_ckpt_use: ``'whole'`` or a :func:`g2sd.checkpoint.load_pretrained` use,
            see :func:`load_teacher_checkpoint`.
        teacher_ckpt_trusted: The teacher file is an mmengine training checkpoint of ours.
        teacher_allow_missing: fnmatch patterns of teacher keys that may be missing.
        teacher_allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.
        allow_random_teacher: Accept ``teacher_ckpt=None`` (tests and benchmarks only).
        teacher_forward: How the teacher runs on ``inputs``: None -> ``teacher(inputs,
            data_samples, mode='tensor')`` for an mmengine model, ``teacher(inputs)``
            otherwise; a method name (e.g. ``'extract_feat'``) -> ``teacher.<name>(inputs)``.
        student_loss_weight: Multiplier of the student's own losses (G2SD cls: 0.5).
        data_preprocessor: Defaults to the student's ``data_preprocessor``.
        init_cfg: mmengine ``init_cfg`` of the wrapper.
    """

    def __init__(
        self,
        student: dict | nn.Module,
        teacher: dict | nn.Module,
        teacher_ckpt: str | None = None,
        distill: Sequence[dict] = (),
        teacher_ckpt_use: str = 'whole',
        teacher_ckpt_trusted: bool = False,
        teacher_allow_missing: Sequence[str] = (),
        teacher_allow_unexpected: Sequence[str] = (),
        allow_random_teacher: bool = False,
        teacher_forward: str | None = None,
        student_loss_weight: float = 1.0,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        if teacher_ckpt is None and not allow_random_teacher:
            raise ValueError(
                'teacher_ckpt is required: specific distillation needs a fine-tuned teacher '
                '(set allow_random_teacher=True only for tests / benchmarks)'
            )
        if teacher_ckpt_use != 'whole' and teacher_ckpt_use not in USES:
            raise ValueError(
                f"teacher_ckpt_use must be 'whole' or one of {USES}, got {teacher_ckpt_use!r}"
            )
        if student_loss_weight < 0:
            raise ValueError(f'student_loss_weight must be >= 0, got {student_loss_weight!r}')
        student = build_module(student, 'student')
        if data_preprocessor is None:
            data_preprocessor = getattr(student, 'data_preprocessor', None)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.student = student
        # Load before freezing and hiding: a wrong file fails here, before any training.
        teacher = build_module(teacher, 'teacher')
        if teacher_ckpt is not None:
            report = load_teacher_checkpoint(
                teacher,
                teacher_ckpt,
                use=teacher_ckpt_use,
                trusted=teacher_ckpt_trusted,
                allow_missing=teacher_allow_missing,
                allow_unexpected=teacher_allow_unexpected,
            )
            print_log(
                'DistillModel teacher: '
                + report.summary(type(teacher).__name__, str(teacher_ckpt)),
                logger='current',
            )
        else:
            logger.warning('DistillModel: the teacher is randomly initialised (no teacher_ckpt)')
        self.set_teacher(teacher, teacher_ckpt)
        self.teacher_forward = teacher_forward
        self.student_loss_weight = float(student_loss_weight)
        #: Multiplier of every distillation loss (set by ``g2sd.DistillWeightHook``).
        self.distill_weight_scale = 1.0
        #: When True, ``loss`` runs the student alone (set by ``g2sd.StopDistillHook``).
        self.distillation_stopped = False
        self.adapters = nn.ModuleDict()
        self.distill_losses = nn.ModuleDict()
        self._items = [self._build_item(i, cfg) for i, cfg in enumerate(distill)]
        self._student_rec = ModuleRecorder(
            self.student,
            [s.module for it in self._items for s in self._sources(it, 'student')],
            'student',
        )
        self._teacher_rec = ModuleRecorder(
            teacher,
            [s.module for it in self._items for s in self._sources(it, 'teacher')],
            'teacher',
        )
        #: Predict with the teacher instead of the student (``g2sd.TeacherValHook``).
        self.predict_with_teacher = False

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
        loss = build_module(cfg['loss'], f'distill[{i}].loss')
        name = cfg.get('name') or loss_name(loss)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f'distill[{i}].name must be an identifier, got {name!r}')
        if name in self.distill_losses:
            raise ValueError(f'two distill items are named {name!r}; give them distinct names')
        self.distill_losses[name] = loss
        if cfg.get('adapter') is not None:
            self.adapters[name] = build_module(cfg['adapter'], f'distill[{i}].adapter')
        call = int(cfg.get('call', 0))
        extra: dict[str, _Source] = {}
        for kw, spec in dict(cfg.get('extra') or {}).items():
            if not isinstance(spec, Mapping) or spec.get('source') not in ('student', 'teacher'):
                raise ValueError(
                    f"distill[{i}].extra[{kw!r}] must be dict(source='student'|'teacher', "
                    f'module=..., index=...), got {spec!r}'
                )
            extra[kw] = _Source(
                spec['source'], spec.get('module', ''), spec.get('index'), int(spec.get('call', 0))
            )
        return _Item(
            name=name,
            student=_Source('student', cfg['student'], cfg.get('student_index'), call),
            teacher=_Source('teacher', cfg['teacher'], cfg.get('teacher_index'), call),
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

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accept a plain student checkpoint: ``prefix + k`` -> ``prefix + 'student.' + k``."""
        own = [k for k in state_dict if k.startswith(prefix)]
        ours = (f'{prefix}student.', f'{prefix}adapters.', f'{prefix}distill_losses.')
        if own and not any(k.startswith(ours) for k in own):
            for k in own:
                state_dict[f'{prefix}student.{k[len(prefix) :]}'] = state_dict.pop(k)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> DistillModel:
        """Copy the wrapper but share the frozen teacher (EMA copies must not duplicate it)."""
        if self._teacher is not None:
            memo[id(self._teacher)] = self._teacher
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

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

    def run_teacher(self, inputs: torch.Tensor, data_samples: Any = None) -> Any:
        """The teacher's forward on ``inputs`` (eval, no grad)."""
        teacher = self._teacher
        if teacher is None:
            raise RuntimeError('DistillModel has no teacher')
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            if self.teacher_forward is not None:
                return getattr(teacher, self.teacher_forward)(inputs)
            if isinstance(teacher, BaseModel):
                return teacher(inputs, data_samples, mode='tensor')
            return teacher(inputs)

    def _teacher_output(self, inputs: torch.Tensor, data_samples: Any, mode: str) -> Any:
        teacher = self._teacher
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
        """
        if self.distillation_stopped or not self._items:
            return self._scale_student(self.student(inputs, data_samples, mode='loss'))
        try:
            with self._teacher_rec.record():
                self.run_teacher(inputs, data_samples)
            with self._student_rec.record():
                losses = self.student(inputs, data_samples, mode='loss')
            losses = self._scale_student(losses)
            losses.update(self.compute_distill_losses(data_samples))
        finally:
            self._teacher_rec.clear()
            self._student_rec.clear()
        return losses

    def _scale_student(self, losses: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(losses, dict):
            raise TypeError(
                f"the student's loss mode must return a dict, got {type(losses).__name__}"
            )
        w = self.student_loss_weight
        if w == 1.0:
            return losses
        out = {}
        for k, v in losses.items():
            if 'loss' in k and isinstance(v, torch.Tensor):
                v = v * w
            elif 'loss' in k and isinstance(v, (list, tuple)):
                v = type(v)(x * w for x in v)
            out[k] = v
        return out

    def _get(self, src: _Source) -> Any:
        rec = self._student_rec if src.source == 'student' else self._teacher_rec
        return select(rec.get(src.module, src.call), src.index)

    def compute_distill_losses(self, data_samples: Any) -> dict[str, torch.Tensor]:
        """``{'distill.loss_<name>': weight_scale * loss(adapter(s), t, **extra)}`` per item.

        Subclasses with needs beyond the item table override this (records via
        ``self._student_rec.get(path)`` / ``self._teacher_rec.get(path)``).
        """
        out: dict[str, torch.Tensor] = {}
        for item in self._items:
            s = self._get(item.student)
            t = self._get(item.teacher)
            if item.name in self.adapters:
                s = self.adapters[item.name](s)
            kwargs = {kw: self._get(src) for kw, src in item.extra.items()}
            if item.gt:
                kwargs['gt'] = data_samples
            value = self.distill_losses[item.name](s, t, **kwargs)
            out[f'distill.loss_{item.name}'] = value * self.distill_weight_scale
        return out

    def parse_losses(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mmengine's parsing plus a finiteness check before the optimiser step."""
        from g2sd.engine.model import check_finite_loss

        loss, log_vars = super().parse_losses(losses)
        check_finite_loss(loss, log_vars)
        return loss, log_vars
