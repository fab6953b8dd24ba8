"""The one distillation base of g2sd: teacher building, strict loading, freezing, loss parsing.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) distils twice from a frozen teacher: generically (the MAE teacher's
decoder features, :mod:`g2sd.distill.generic`, with the peers D-MAE and TinyMIM) and
task-specifically (a fine-tuned teacher of the same task, :mod:`g2sd.distill.specific`).
Both are subclasses of :class:`DistillerBase`, which owns, in one place:

* building the student and the teacher, each in its own registry scope
  (:func:`build_model`: ``type='mmdet.MaskRCNN'`` builds with ``_scope_='mmdet'`` so its
  unprefixed children resolve; ``'mmdet::path/to/cfg.py'`` takes ``model`` of a package
  config, as mmrazor does);
* strict teacher loading through :func:`g2sd.checkpoint.load_pretrained` (path or in-memory
  state dict), with the one-screen summary written to the train log;
* the out-of-tree teacher (:class:`TeacherHolder`): frozen, not in ``state_dict()``, the
  optimizer, DDP, ``init_weights`` or EMA copies; moved by ``.to()``; eval after
  ``train()``; shared, not copied, by ``copy.deepcopy``;
* optionally, the teacher's matmul weights held in the autocast dtype once
  (:meth:`TeacherHolder.teacher_autocast`, ``teacher_amp_weights``) instead of cast at
  every step;
* ``teacher_forward`` (None, a method name, a callable or ``'pkg.mod:fn'``);
* loss parsing with the non-finite check (:class:`FiniteLossParsing`, also used by
  ``g2sd.ViTClassifier``).

Argument names are the same in both stages: ``teacher``, ``teacher_checkpoint``,
``teacher_use``, ``teacher_allow_missing``, ``teacher_allow_unexpected``,
``teacher_trusted``, ``allow_random_teacher``, ``teacher_forward``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModel
from torch import nn

from g2sd.registry import MODELS

__all__ = [
    'NAN_ADVICE',
    'DistillerBase',
    'FiniteLossParsing',
    'TeacherHolder',
    'build_model',
    'check_finite_loss',
    'freeze',
    'resolve_teacher_forward',
]

#: The last sentence of the non-finite-loss error (agreed with the runner's resume options).
NAN_ADVICE = (
    'The optimiser step was not taken; the last saved checkpoint is intact. Fix lr / AMP / '
    'data in the config and continue with --resume --cfg-options resume_hparams=config '
    '(otherwise the resumed optimizer and scheduler state bring the old values back).'
)

TeacherForward = str | Callable[..., Any] | None


# ----------------------------------------------------------------------- building
def _scope_of(cfg: Mapping[str, Any]) -> str:
    """The registry scope a config builds in: ``_scope_``, else the type's prefix, else g2sd."""
    if cfg.get('_scope_'):
        return str(cfg['_scope_'])
    typ = cfg.get('type')
    if isinstance(typ, str) and '.' in typ:
        return typ.split('.', 1)[0]
    return 'g2sd'


def build_model(cfg: dict | str | nn.Module, what: str) -> nn.Module:
    """Build a model config in its own registry scope, or pass a module through.

    Args:
        cfg: An ``nn.Module``; a config dict with ``type`` (``'g2sd.X'`` or unprefixed:
            the ``g2sd`` scope; ``'mmdet.MaskRCNN'``: the ``mmdet`` scope, so unprefixed
            children such as ``type='RPNHead'`` resolve in mmdet); or a package config
            reference ``'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'`` (its ``model``,
            built in the package's scope; needs the package installed with its configs).
        what: Name used in error messages (e.g. ``'student'``).

    Returns:
        The built module.

    Raises:
        TypeError: ``cfg`` is neither a module, a config dict nor a reference, or builds
            something that is not an ``nn.Module``.
        ValueError: A ``'pkg::path'`` reference whose config has no ``model``.
    """
    if isinstance(cfg, nn.Module):
        return cfg
    if isinstance(cfg, str):
        if '::' not in cfg:
            raise TypeError(
                f"{what} must be a module, a config dict or a 'package::path/to/config.py' "
                f'reference, got {cfg!r}'
            )
        from mmengine.hub import get_config

        package = cfg.split('::', 1)[0]
        loaded = get_config(cfg)
        if 'model' not in loaded:
            raise ValueError(f'{what} reference {cfg!r} has no model in its config')
        model_cfg = loaded.model.to_dict() if hasattr(loaded.model, 'to_dict') else loaded.model
        cfg = dict(model_cfg)
        cfg.setdefault('_scope_', loaded.get('default_scope') or package)
    if not isinstance(cfg, Mapping) or 'type' not in cfg:
        raise TypeError(f'{what} must be an nn.Module or a config dict with "type", got {cfg!r}')
    cfg = dict(cfg)
    # mmengine switches the default scope to ``_scope_`` for the whole build (and imports
    # ``<scope>.registry``), so the children a host-library model builds resolve there.
    cfg['_scope_'] = _scope_of(cfg)
    module = MODELS.build(cfg)
    if not isinstance(module, nn.Module):
        raise TypeError(f'{what} config built {type(module).__name__}, not an nn.Module')
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and switch to eval mode."""
    module.requires_grad_(False)
    return module.eval()


def resolve_teacher_forward(spec: TeacherForward) -> TeacherForward:
    """Check a ``teacher_forward`` spec; ``'pkg.mod:fn'`` becomes the imported callable.

    Args:
        spec: None (default forward), a method name of the teacher (``'extract_feat'``),
            a callable ``fn(teacher, inputs, data_samples)``, ``'pkg.mod:fn'`` (imported),
            a dotted ``'pkg.mod.fn'`` (imported when ``pkg.mod`` imports and has ``fn``,
            e.g. ``'g2sd.det.rpn_teacher_forward'``) or the name of a function registered
            in mmengine's ``FUNCTIONS`` registry (looked up when no teacher method has the
            name).

    Returns:
        None, a method name (str) or a callable.

    Raises:
        TypeError: ``spec`` has another type.
        ValueError: ``'pkg.mod:fn'`` cannot be imported.
    """
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TypeError(
            f'teacher_forward must be None, a method name, a callable or "pkg.mod:fn", got {spec!r}'
        )
    if ':' in spec:
        mod_name, fn_name = spec.split(':', 1)
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f'teacher_forward={spec!r} cannot be imported: {err}') from err
        if not callable(fn):
            raise TypeError(f'teacher_forward={spec!r} is not callable')
        return fn
    if '.' in spec:
        mod_name, fn_name = spec.rsplit('.', 1)
        try:
            module = importlib.import_module(mod_name)
        except ImportError:
            module = None
        fn = getattr(module, fn_name, None)
        if callable(fn):
            return fn
    return spec


# ------------------------------------------------------------------- finite losses
def _is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def check_finite_loss(loss: torch.Tensor, log_vars: Mapping[str, torch.Tensor]) -> None:
    """Raise ``FloatingPointError`` if ``loss`` is NaN/Inf on any rank.

    Under ``torch.distributed`` the finiteness flag is all-reduced (MIN) first, so every
    rank raises together instead of the healthy ranks hanging in the next all-reduce.

    Args:
        loss: The total loss about to be back-propagated.
        log_vars: The individual loss values, named in the error message.

    Raises:
        FloatingPointError: The total loss is not finite (on this or another rank); the
            message ends with :data:`NAN_ADVICE`.
    """
    finite = torch.isfinite(loss.detach()).all()
    if _is_dist() and torch_dist.get_world_size() > 1:
        flag = finite.to(torch.float32).reshape(1)
        if torch_dist.get_backend() == 'nccl' and flag.device.type != 'cuda':
            flag = flag.cuda()
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
        finite_everywhere = bool(flag.item() > 0)
    else:
        finite_everywhere = bool(finite)
    if finite_everywhere:
        return
    hub = MessageHub.get_current_instance()
    it = hub.get_info('iter')
    where = f'at iter {it + 1}' if isinstance(it, int) else 'in this iteration'
    values = ', '.join(
        f'{k}={v.detach().float().mean().item():.6g}'
        for k, v in log_vars.items()
        if isinstance(v, torch.Tensor)
    )
    who = ''
    if _is_dist():
        side = 'this rank' if not bool(finite) else 'another rank'
        who = f' (rank {torch_dist.get_rank()}; non-finite on {side})'
    raise FloatingPointError(f'non-finite loss {where}{who}: {values}. {NAN_ADVICE}')


class FiniteLossParsing:
    """``BaseModel`` mixin: mmengine's ``parse_losses`` plus the non-finite check.

    mmengine sums every entry whose key contains ``'loss'`` (tensors and lists of tensors);
    the total is checked with :func:`check_finite_loss` before backward and
    ``optimizer.step``, so no parameter changes and no checkpoint is written on NaN/Inf.
    Put it before ``BaseModel`` in the bases.
    """

    def parse_losses(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, log variables); raises on a non-finite total.

        Raises:
            ValueError: No key contains ``'loss'``.
            FloatingPointError: The total loss is NaN/Inf.
        """
        loss, log_vars = super().parse_losses(losses)  # type: ignore[misc]
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f'no loss term in {sorted(losses)}: keys must contain "loss"')
        check_finite_loss(loss, log_vars)
        return loss, log_vars


# -------------------------------------------------------------------- the teacher
class TeacherHolder(nn.Module):
    """Mixin for modules that own a frozen teacher outside their module tree.

    The teacher is stored with ``object.__setattr__`` (not registered): it is absent from
    ``state_dict()``, ``parameters()`` (so from the optimizer and DDP), ``modules()`` and
    ``init_weights``. Device / dtype moves of the owner (``.to()``, ``.cuda()``,
    ``.half()``) are applied to it, it stays in ``eval()`` through ``train()``, and
    ``copy.deepcopy`` (EMA) shares it instead of copying it.

    Under autocast, PyTorch casts the weights of a frozen module at every call (its cast
    cache keeps only leaves that require grad). With ``teacher_amp_weights = True``,
    :meth:`teacher_autocast` holds a copy of the teacher's ``nn.Linear`` / ``nn.Conv2d``
    weights in the autocast dtype, made once and renewed only when the fp32 weights change;
    the result is the same as autocast's own cast (same rounding), and nothing changes
    outside autocast. It is off by default: on a 2-core AVX512-BF16 CPU the GD-S step
    (MAE ViT-B teacher, batch 8 and 32) was no faster with it, and the copy costs 2 bytes
    per teacher weight (186 MiB for ViT-B) of peak memory.
    """

    _teacher: nn.Module | None = None
    teacher_checkpoint: str | None = None
    #: Hold the teacher's matmul weights in the autocast dtype (see :meth:`teacher_autocast`).
    teacher_amp_weights: bool = False
    _teacher_casts: dict[Any, Any] | None = None

    def set_teacher(self, teacher: nn.Module | None, checkpoint: str | None = None) -> None:
        """Attach ``teacher`` (frozen, eval) without registering it as a submodule.

        Args:
            teacher: The teacher or None.
            checkpoint: Name of its weights (a path, or 'in-memory teacher state dict'),
                reported by ``g2sd.TeacherCheckHook``.
        """
        if teacher is not None:
            freeze(teacher)
        object.__setattr__(self, '_teacher', teacher)
        object.__setattr__(self, 'teacher_checkpoint', checkpoint)

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (not a submodule), or None."""
        return self._teacher

    def _teacher_cast_weights(
        self, device_type: str, dtype: torch.dtype
    ) -> list[tuple[nn.Module, str, torch.Tensor]]:
        """(module, name, weight in ``dtype``) of the teacher's Linear / Conv2d parameters.

        Cached per (device type, dtype); renewed when a source parameter was replaced or
        modified in place (its ``data_ptr`` or ``_version`` changed).
        """
        casts = self._teacher_casts
        if casts is None:
            casts = {}
            object.__setattr__(self, '_teacher_casts', casts)
        sources = [
            (m, name, p)
            for m in self._teacher.modules()
            if type(m) in (nn.Linear, nn.Conv2d)
            for name, p in m._parameters.items()
            if p is not None and p.is_floating_point() and p.dtype != dtype
        ]
        stamp = tuple((p.data_ptr(), p._version) for _, _, p in sources)
        cached = casts.get((device_type, dtype))
        if cached is None or cached[0] != stamp:
            with torch.no_grad():
                cast = [(m, name, p.detach().to(dtype)) for m, name, p in sources]
            casts.clear()  # one dtype at a time: no stale copies kept in memory
            casts[(device_type, dtype)] = (stamp, cast)
            return cast
        return cached[1]

    @contextlib.contextmanager
    def teacher_autocast(self) -> Iterator[None]:
        """Run the teacher with its matmul weights already in the autocast dtype.

        Inside an enabled ``torch.autocast`` of the teacher's device, the ``weight`` /
        ``bias`` of its ``nn.Linear`` and ``nn.Conv2d`` modules are swapped for cached
        copies in the autocast dtype for the duration of the block (and restored after),
        so autocast does not cast them again at every step. The numbers are the ones
        autocast itself would compute. Outside autocast, with no teacher or with
        ``teacher_amp_weights = False`` (the default) this does nothing.
        """
        teacher = self._teacher
        param = next(teacher.parameters(), None) if teacher is not None else None
        device_type = param.device.type if param is not None else 'cpu'
        if (
            param is None
            or not self.teacher_amp_weights
            or not torch.is_autocast_enabled(device_type)
        ):
            yield
            return
        cast = self._teacher_cast_weights(device_type, torch.get_autocast_dtype(device_type))
        saved = [(m, name, m._parameters[name]) for m, name, _ in cast]
        for m, name, w in cast:
            m._parameters[name] = w
        try:
            yield
        finally:
            for m, name, p in saved:
                m._parameters[name] = p

    def _apply(self, fn: Any, recurse: bool = True) -> TeacherHolder:  # noqa: ANN401
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn)
        return self

    def train(self, mode: bool = True) -> TeacherHolder:
        """Set the training mode of the owner; the teacher stays in eval."""
        super().train(mode)
        if self._teacher is not None:
            self._teacher.eval()
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TeacherHolder:
        """Copy the owner but share the frozen teacher (EMA copies must not duplicate it)."""
        if self._teacher is not None:
            memo[id(self._teacher)] = self._teacher
        if self._teacher_casts is not None:
            memo[id(self._teacher_casts)] = self._teacher_casts
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def _checkpoint_name(checkpoint: str | os.PathLike | Mapping[str, Any]) -> str:
    if isinstance(checkpoint, (str, os.PathLike)):
        return os.fspath(checkpoint)
    return 'in-memory teacher state dict'


class DistillerBase(FiniteLossParsing, TeacherHolder, BaseModel):
    """Student + frozen out-of-tree teacher, loaded strictly (the base of every distiller).

    Args:
        student: Config, ``'pkg::config.py'`` reference or module (see :func:`build_model`).
        teacher: Config, reference or module; None for teacher-free training (MAE).
        teacher_checkpoint: Path or in-memory state dict of the teacher's weights, loaded
            strictly when the model is built (a missing or wrong file fails before
            training) with :func:`g2sd.checkpoint.load_pretrained`.
        teacher_use: The loader use (``'whole'``: the teacher's own state dict, exactly;
            ``'mae_teacher'``, ``'encoder_teacher'``, ... see ``g2sd.checkpoint.USES``).
        teacher_allow_missing: fnmatch patterns of teacher keys that may be missing.
        teacher_allow_unexpected: fnmatch patterns of checkpoint keys that may be ignored.
        teacher_trusted: The file is an mmengine training checkpoint of ours (see
            :func:`g2sd.checkpoint.load_file`).
        allow_random_teacher: Accept a teacher without checkpoint (tests and smoke runs
            only; a random teacher distils nothing).
        teacher_forward: How :meth:`run_teacher` runs the teacher, see
            :func:`resolve_teacher_forward`.
        data_preprocessor: Config or module; defaults to the student's own
            ``data_preprocessor`` if it has one, else mmengine's ``BaseDataPreprocessor``.
        init_cfg: mmengine ``init_cfg`` of the distiller.

    Raises:
        ValueError: A checkpoint without teacher, a teacher without checkpoint (unless
            ``allow_random_teacher``), or an unknown ``teacher_use``.
        g2sd.checkpoint.CheckpointError: The teacher's weights do not fit.
    """

    def __init__(
        self,
        student: dict | str | nn.Module,
        teacher: dict | str | nn.Module | None = None,
        teacher_checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
        teacher_use: str = 'whole',
        teacher_allow_missing: Sequence[str] = (),
        teacher_allow_unexpected: Sequence[str] = (),
        teacher_trusted: bool = False,
        allow_random_teacher: bool = False,
        teacher_forward: TeacherForward = None,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        from g2sd.checkpoint import USES

        if teacher_use not in USES and teacher_use != 'whole':
            raise ValueError(f'teacher_use must be one of {USES}, got {teacher_use!r}')
        if teacher is None and teacher_checkpoint is not None:
            raise ValueError(
                f'teacher_checkpoint={_checkpoint_name(teacher_checkpoint)!r} given without teacher'
            )
        if teacher is not None and teacher_checkpoint is None and not allow_random_teacher:
            raise ValueError(
                f'{type(self).__name__} needs teacher_checkpoint (the teacher weights); set '
                'allow_random_teacher=True only for tests / benchmarks'
            )
        student = build_model(student, 'student')
        if data_preprocessor is None:
            data_preprocessor = getattr(student, 'data_preprocessor', None)
            if data_preprocessor is None:
                data_preprocessor = dict(type='BaseDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.student = student
        self.teacher_use = teacher_use
        self.teacher_forward = resolve_teacher_forward(teacher_forward)
        if teacher is None:
            self.set_teacher(None)
            return
        built = build_model(teacher, 'teacher')
        name = None
        if teacher_checkpoint is not None:
            name = self.load_teacher(
                built,
                teacher_checkpoint,
                use=teacher_use,
                trusted=teacher_trusted,
                allow_missing=teacher_allow_missing,
                allow_unexpected=teacher_allow_unexpected,
            )
        else:
            print_log(
                f'{type(self).__name__}: the teacher is randomly initialised '
                '(allow_random_teacher=True: tests / smoke runs only)',
                logger='current',
                level=logging.WARNING,
            )
        # Frozen and hidden only after loading: a wrong file fails above, before training.
        self.set_teacher(built, name)

    def load_teacher(
        self,
        teacher: nn.Module,
        checkpoint: str | os.PathLike | Mapping[str, Any],
        *,
        use: str,
        trusted: bool = False,
        allow_missing: Sequence[str] = (),
        allow_unexpected: Sequence[str] = (),
    ) -> str:
        """Load ``teacher`` strictly and log the summary to the train log; returns the name.

        Raises:
            TypeError: ``checkpoint`` is neither a path nor a mapping.
            g2sd.checkpoint.CheckpointError: The weights do not fit.
        """
        from g2sd.checkpoint import load_pretrained

        if not isinstance(checkpoint, (str, os.PathLike, Mapping)):
            raise TypeError(
                'teacher_checkpoint must be a path or a state dict, got '
                f'{type(checkpoint).__name__}'
            )
        source = _checkpoint_name(checkpoint)
        report = load_pretrained(
            teacher,
            checkpoint,
            use=use,
            trusted=trusted,
            allow_missing=allow_missing,
            allow_unexpected=allow_unexpected,
            source=source,
        )
        print_log(
            f'{type(self).__name__} teacher: ' + report.summary(type(teacher).__name__, source),
            logger='current',
        )
        return source

    def run_teacher(self, inputs: Any, data_samples: Any = None) -> Any:
        """The teacher's forward on ``inputs`` in eval mode without gradients.

        ``teacher_forward`` None: ``teacher(inputs, data_samples, mode='tensor')`` for an
        mmengine ``BaseModel``, ``teacher(inputs)`` otherwise; a method name:
        ``teacher.<name>(inputs)``; a callable: ``fn(teacher, inputs, data_samples)``.

        Raises:
            RuntimeError: The distiller has no teacher.
        """
        teacher = self._teacher
        if teacher is None:
            raise RuntimeError(f'{type(self).__name__} has no teacher')
        if teacher.training:
            teacher.eval()
        fwd = self.teacher_forward
        with torch.no_grad(), self.teacher_autocast():
            if callable(fwd):
                return fwd(teacher, inputs, data_samples)
            if isinstance(fwd, str):
                method = getattr(teacher, fwd, None)
                if callable(method):
                    return method(inputs)
                from mmengine.registry import FUNCTIONS

                fn = FUNCTIONS.get(fwd)
                if fn is None:
                    raise ValueError(
                        f'teacher_forward={fwd!r}: {type(teacher).__name__} has no such method '
                        'and no function of that name is registered in FUNCTIONS'
                    )
                return fn(teacher, inputs, data_samples)
            if isinstance(teacher, BaseModel):
                return teacher(inputs, data_samples, mode='tensor')
            return teacher(inputs)

    def init_weights(self) -> None:
        """Initialise per ``init_cfg`` only: students initialise themselves when built, and
        nothing here may overwrite loaded weights (the teacher is never initialised)."""
        if self.init_cfg:
            super().init_weights()
