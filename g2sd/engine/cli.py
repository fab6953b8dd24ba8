"""The one command-line layer of ``tools/train.py`` and ``tools/test.py`` (mmdet's surface).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) runs every stage -- generic distillation, cls / det / seg specific
distillation, evaluation -- from mmengine configs. This module holds the arguments both
tools share (``config``, ``--work-dir``, ``--cfg-options``, ``--launcher``, ``--local-rank``,
and ``--amp`` / ``--vis`` for training) and :func:`apply_common_args`, which applies them to a
config.

Training curves: the configs' visualizer writes scalars with mmengine's ``LocalVisBackend``
(``<work_dir>/<timestamp>/vis_data/scalars.json``); ``--vis tensorboard`` / ``--vis wandb``
adds a ``TensorboardVisBackend`` / ``WandbVisBackend`` next to it (:func:`configure_vis`).

``--cfg-options`` keys are checked before anything is built: a key that is not in the merged
config, not a field the component's ``type`` accepts (its ``__init__`` signature) and not a
known optional runner setting (``resume_hparams``, ``launcher``, ...) is refused with the
closest valid name (``resum=True`` -> ``resume``). A deliberately new key is written with a
leading ``+`` (``--cfg-options +model.foo=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import importlib.util
import inspect
import os
import os.path as osp
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mmengine.config import Config, DictAction

__all__ = [
    'CFG_OPTIONS_HELP',
    'RUNNER_KEYS',
    'VIS_BACKENDS',
    'add_common_args',
    'apply_common_args',
    'check_cfg_options',
    'configure_vis',
    'parse_args',
    'run_main',
]

# Top-level settings mmengine's Runner.from_cfg (and G2SDRunner) read; settable when absent.
RUNNER_KEYS = (
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator',
    'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from',
    'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'runner_type', 'model_wrapper_cfg',
    'find_unused_parameters', 'compile', 'strategy', 'resume_hparams', 'custom_imports',
    'activation_checkpointing', 'efficient_conv_bn_eval',
)  # fmt: skip
# Fields of untyped runner sub-configs.
_SCHEMAS: dict[str, tuple[str, ...]] = {
    'env_cfg': ('cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit'),
    'env_cfg.mp_cfg': ('mp_start_method', 'opencv_num_threads'),
    'env_cfg.dist_cfg': ('backend', 'timeout', 'init_backend'),
    'randomness': ('seed', 'deterministic', 'diff_rank_seed'),
    'auto_scale_lr': ('enable', 'base_batch_size'),
}
# Keys consumed by mmengine's builders rather than the class's __init__.
_BUILDER_KEYS = ('type', '_scope_', 'priority', 'convert_to_iter_based', 'constructor',
                 'paramwise_cfg', 'init_cfg')  # fmt: skip
_ANY = object()

CFG_OPTIONS_HELP = (
    'override config settings, key=value (e.g. train_cfg.max_epochs=10, a list as '
    'key="[a,b]" or key=a,b, nested lists/tuples in quotes). Keys must exist in the config '
    "or be arguments of the component's type (typos are refused with the closest name); add "
    "a new key on purpose with a leading '+' (+model.foo=1). After --resume, "
    "resume_hparams=config makes the config's optimizer / scheduler values win over the "
    "restored ones (default resume_hparams=checkpoint: the checkpoint's, with a warning)"
)


#: ``--vis`` choice -> (mmengine vis backend type, module it needs, setup.cfg extra).
VIS_BACKENDS: dict[str, tuple[str, str | None, str | None]] = {
    'local': ('LocalVisBackend', None, None),
    'tensorboard': ('TensorboardVisBackend', 'tensorboard', 'tensorboard'),
    'wandb': ('WandbVisBackend', 'wandb', 'wandb'),
}


def add_common_args(parser: argparse.ArgumentParser, *, amp: bool = False) -> None:
    """Add ``config``-independent shared options (the positional config is added by the tool).

    Args:
        parser: The tool's parser.
        amp: Also add the training options ``--amp`` and ``--vis``.
    """
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    if amp:
        parser.add_argument(
            '--amp',
            action='store_true',
            default=False,
            help='enable automatic mixed precision (fp16 on CUDA, bf16 autocast on CPU)',
        )
        parser.add_argument(
            '--vis',
            action='append',
            choices=sorted(VIS_BACKENDS),
            default=None,
            help='training-curve backends next to the default LocalVisBackend '
            '(<work_dir>/<timestamp>/vis_data/scalars.json): tensorboard (pip install -e '
            '.[tensorboard]; <work_dir>/<timestamp>/vis_data/ is the --logdir) or wandb '
            '(pip install -e .[wandb]); repeatable',
        )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=CFG_OPTIONS_HELP)
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher'
    )
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and export ``LOCAL_RANK`` when the launcher passed it as an argument."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _resolve_type(kind: Any, scope: str | None) -> type | None:
    """The class a ``type`` names, looked up in mmengine's registries under ``scope``."""
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    from mmengine import registry as mreg
    from mmengine.registry import DefaultScope

    names = ('MODELS', 'HOOKS', 'LOOPS', 'DATASETS', 'DATA_SAMPLERS', 'TRANSFORMS', 'OPTIMIZERS',
             'OPTIM_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'METRICS',
             'EVALUATOR', 'VISUALIZERS', 'VISBACKENDS', 'MODEL_WRAPPERS', 'LOG_PROCESSORS',
             'FUNCTIONS')  # fmt: skip
    ctx = DefaultScope.overwrite_default_scope(scope) if scope else contextlib.nullcontext()
    with ctx:
        for name in names:
            reg = getattr(mreg, name, None)
            try:
                found = reg.get(kind) if reg is not None else None
            except Exception:  # noqa: BLE001 - a registry that cannot resolve it
                found = None
            if isinstance(found, type):
                return found
    return None


def init_arguments(cls: type) -> tuple[list[str], bool]:
    """Named ``__init__`` arguments of ``cls`` (no ``self``, no ``*args`` / ``**kwargs``),
    and whether it also takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    var = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    named = [n for n, p in params.items() if n != 'self' and p.kind not in var]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _fields(node: Mapping[str, Any], path: str, scope: str | None) -> Any:
    """Valid field names of a sub-config, ``_ANY`` when they cannot be known."""
    if path in _SCHEMAS:
        return set(_SCHEMAS[path])
    if path.endswith('_dataloader'):
        from torch.utils.data import DataLoader

        return set(inspect.signature(DataLoader.__init__).parameters) - {'self'}
    kind = node.get('type')
    if kind is None and path == 'optim_wrapper':
        kind = 'OptimWrapper'
    if kind is None and path == 'train_cfg':
        kind = 'EpochBasedTrainLoop' if 'max_epochs' in node else 'IterBasedTrainLoop'
    if kind is None and path == 'log_processor':
        kind = 'LogProcessor'
    cls = _resolve_type(kind, scope)
    if cls is None:
        return set() if kind is None else _ANY
    from mmengine.hooks import CheckpointHook

    named, var_kw = init_arguments(cls)
    if var_kw and not issubclass(cls, CheckpointHook):
        return _ANY
    return set(named) | set(_BUILDER_KEYS)


def check_cfg_options(cfg: Config, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``--cfg-options`` keys against ``cfg``; return them ready to merge.

    Args:
        cfg: The loaded config (before the options are merged).
        options: ``{dotted.key: value}`` from ``DictAction``; a key starting with ``+`` is a
            deliberate new key (the ``+`` is removed, nothing is checked).

    Returns:
        The options with ``+`` prefixes removed.

    Raises:
        ValueError: A key names nothing in the config nor any argument of the component it
            would go to; the message names the closest valid key.
    """
    scope = cfg.get('default_scope')
    retyped = [k[: -len('.type')] for k in options if k.lstrip('+').endswith('.type')]
    out: dict[str, Any] = {}
    for raw, value in options.items():
        if raw.startswith('+'):
            out[raw[1:]] = value
            continue
        out[raw] = value
        if '_delete_' in raw or any(raw.startswith(r + '.') for r in retyped):
            continue
        parts = raw.split('.')
        node: Any = cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg
        for i, part in enumerate(parts):
            where = '.'.join(parts[:i])
            if isinstance(node, (list, tuple)):
                if part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                    continue
                raise ValueError(
                    f'--cfg-options {raw}: {where} is a list of {len(node)} items; {part!r} is '
                    'not an index in it'
                )
            if not isinstance(node, Mapping):
                break  # replacing a non-dict value with a dict: mmengine decides
            if part in node:
                node = node[part]
                continue
            if i == 0:
                if part in RUNNER_KEYS:
                    if part in _SCHEMAS:  # absent but with known fields: check those
                        node = {}
                        continue
                    break
                options_ = sorted(set(node) | set(RUNNER_KEYS))
            else:
                fields = _fields(node, '.'.join(parts[:i]), scope)
                if fields is _ANY or part in fields:
                    break
                options_ = sorted(set(node) | set(fields))
            name = '.'.join([*parts[:i], part])
            match = difflib.get_close_matches(part, options_, n=1, cutoff=0.6)
            hint = f"; did you mean '{'.'.join([*parts[:i], match[0]])}'?" if match else ''
            raise ValueError(
                f'--cfg-options {raw}: {name!r} is not in the config{hint} '
                f"(to add a new key on purpose write '+{raw}')"
            )
    return out


def configure_vis(cfg: Config, backends: Sequence[str]) -> Config:
    """Add the ``--vis`` backends to ``cfg.visualizer.vis_backends`` in place.

    The config's visualizer (``configs/_base_/default_runtime.py``: mmengine's ``Visualizer``
    with a ``LocalVisBackend``; a det / seg visualizer type is kept) gets one backend of each
    named kind it does not have yet; ``LocalVisBackend`` is always kept, so the scalars the
    reproduction's figures read are written whichever backends are added.

    Args:
        cfg: The loaded config.
        backends: Names of :data:`VIS_BACKENDS` (``'local'``, ``'tensorboard'``, ``'wandb'``).

    Returns:
        ``cfg``.

    Raises:
        ValueError: An unknown backend name, or the package a backend needs is not installed
            (the message names the ``pip install -e .[extra]`` to run).
    """
    for name in backends:
        if name not in VIS_BACKENDS:
            raise ValueError(f'--vis {name!r} is not one of {sorted(VIS_BACKENDS)}')
        _, module, extra = VIS_BACKENDS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ValueError(
                f'--vis {name} needs the {module!r} package, which is not installed: '
                f'pip install -e .[{extra}]'
            )
    vis = cfg.get('visualizer', None)
    vis = (
        dict(type='Visualizer', _scope_='mmengine')
        if vis is None
        else copy.deepcopy(vis.to_dict() if hasattr(vis, 'to_dict') else dict(vis))
    )
    kept = list(vis.get('vis_backends') or [])
    types = [b.get('type') for b in kept]
    for name in ['local', *backends]:
        kind = VIS_BACKENDS[name][0]
        if kind not in types:
            kept.append(dict(type=kind))
            types.append(kind)
    vis['vis_backends'] = kept
    cfg.visualizer = vis
    return cfg


def apply_common_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the shared options to ``cfg`` in place (launcher, cfg-options, work dir, AMP,
    visualizer backends).

    Args:
        cfg: The loaded config.
        args: Parsed arguments of :func:`add_common_args` plus ``config``.

    Returns:
        ``cfg``.

    Raises:
        ValueError: An unknown ``--cfg-options`` key (see :func:`check_cfg_options`), or a
            ``--vis`` backend whose package is missing (see :func:`configure_vis`).
    """
    from g2sd.engine.runner import configure_amp

    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(check_cfg_options(cfg, args.cfg_options))
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if hasattr(args, 'amp'):
        configure_amp(cfg, enable=args.amp)
    if getattr(args, 'vis', None):
        configure_vis(cfg, args.vis)
    return cfg


#: What a user's input raises (bad config values, missing or unfit files -- CheckpointError
#: is a ValueError -- and a run stopped by a non-finite loss): the tools print these as one
#: line instead of a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


def run_main(main: Callable[[], Any], prog: str) -> None:
    """Run a tool's ``main()``; a user error becomes ``PROG: error: Type: message``, exit 1.

    Set ``G2SD_TRACEBACK=1`` to get the full traceback instead.

    Args:
        main: The tool's entry point (reads ``sys.argv``).
        prog: The tool's name in the message (e.g. ``'train.py'``).
    """
    try:
        main()
    except USER_ERRORS as err:
        if os.environ.get('G2SD_TRACEBACK'):
            raise
        sys.stderr.write(
            f'{prog}: error: {type(err).__name__}: {err}\n'
            f'(set G2SD_TRACEBACK=1 for the traceback)\n'
        )
        raise SystemExit(1) from None
