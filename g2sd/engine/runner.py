"""The one mmengine runner of g2sd: safe, exact resume and checked configs.

Every stage of G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) -- generic distillation and the task-specific
cls / det / seg runs -- trains through :class:`G2SDRunner`, an ``mmengine.runner.Runner``
that adds:

- checkpoints as plain data, written atomically: the message hub's ``HistoryBuffer`` objects
  and numpy values are stored as tensors / lists / numbers, so a g2sd checkpoint is read
  with ``torch.load(weights_only=True)`` and no extra globals. The file goes through
  :func:`g2sd.checkpoint.atomic_save` (temporary name, fsync, ``os.replace``), so a killed
  write never leaves a truncated ``iter_N.pth`` and ``last_checkpoint`` never points to one;
- resume that never runs code from the file: :meth:`G2SDRunner.resume` reads through
  :func:`g2sd.checkpoint.load_file` (``weights_only=True``; ``trusted=True`` only adds numpy
  data and reads mmengine's ``HistoryBuffer`` of plain-mmengine checkpoints into inert
  stubs, which are rebuilt into real buffers here). ``load_from`` reads plain weights only;
- resume that continues identically: the torch / numpy / python / CUDA RNG states of every
  rank are saved and restored (``g2sd/engine/loops.py`` restores them after the batches a
  mid-epoch checkpoint already trained on are skipped);
- auto-resume (:func:`find_resume_checkpoint`) that survives a missing / empty
  ``last_checkpoint`` and a truncated newest checkpoint (falls back to the previous intact
  one, warning with both names);
- after a resume, a warning naming every restored optimizer / scheduler value that differs
  from the config. The checkpoint's values are used (``resume_hparams='checkpoint'``, the
  default); ``--cfg-options resume_hparams=config`` takes the config's values instead (the
  schedulers are replayed to the resumed step with the config's settings);
- checks before training: ``max_epochs`` / ``max_iters`` of at least 1, hook arguments
  against the hook's signature (and ``CheckpointHook``'s extra arguments against
  :meth:`G2SDRunner.save_checkpoint`), ``resume_hparams``;
- CPU: SyncBN reverted to BN before DDP wrapping (gloo DDP refuses SyncBN).

Under DDP, :meth:`G2SDRunner.save_checkpoint` must be called on every rank (as
``CheckpointHook`` does): the RNG states are gathered with ``all_gather_object``.

Helpers: :func:`setup_cpu_distributed` (torchrun + gloo without CUDA) and
:func:`configure_amp` (device-aware ``--amp``).
"""

from __future__ import annotations

import copy
import datetime
import difflib
import glob
import inspect
import logging
import math
import os.path as osp
import pickle
import re
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import mmengine
import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop as _MMEpochLoop
from mmengine.runner import IterBasedTrainLoop as _MMIterLoop
from mmengine.runner import Runner
from mmengine.runner.checkpoint import (
    _load_checkpoint,
    _load_checkpoint_to_model,
    save_checkpoint,
    weights_to_cpu,
)
from mmengine.utils import get_git_hash
from torch import nn

from g2sd.checkpoint import (
    CheckpointError,
    MMEngineStateStub,
    atomic_save,
    load_file,
    load_pretrained,
)
from g2sd.engine import loops as g2sd_loops
from g2sd.engine.cli import init_arguments

__all__ = [
    'RESUME_HPARAMS',
    'G2SDRunner',
    'configure_amp',
    'find_resume_checkpoint',
    'setup_cpu_distributed',
]

RESUME_HPARAMS = ('checkpoint', 'config')
_CKPT_RE = re.compile(r'^(iter|epoch)_(\d+)\.pth$')
# Scheduler state entries that record progress, not configuration.
_PROGRESS_KEYS = frozenset(
    {'last_step', '_global_step', '_last_value', '_get_value_called_within_step', 'base_values'}
)
_LOOP_TYPES = {
    'EpochBasedTrainLoop': g2sd_loops.EpochBasedTrainLoop,
    'IterBasedTrainLoop': g2sd_loops.IterBasedTrainLoop,
}


def _is_local(path: str) -> bool:
    return '://' not in path and not re.match(r'^[\w-]+:', path)


def _readable(path: str) -> str | None:
    """None if ``path`` looks like a complete torch zip checkpoint, else why not."""
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (OSError, zipfile.BadZipFile) as err:
        return f'{type(err).__name__}: {err}'
    return None


def find_resume_checkpoint(work_dir: str) -> str | None:
    """Checkpoint to auto-resume from in ``work_dir``.

    Candidates, newest first: the file named in ``last_checkpoint`` (also tried relative to
    ``work_dir``), then ``iter_*.pth`` / ``epoch_*.pth`` by step number, then mtime. A
    missing / empty record is skipped with a warning; a truncated or corrupt candidate
    (not a complete zip archive) is skipped with a warning naming it and the file used
    instead.

    Args:
        work_dir: The run's work dir.

    Returns:
        A path, or None when there is nothing (readable) to resume.
    """
    candidates: list[str] = []
    record = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(record):
        with open(record) as f:
            path = f.read().strip()
        found_record = False
        for cand in (path, osp.join(work_dir, osp.basename(path))):
            if path and osp.isfile(cand):
                candidates.append(cand)
                found_record = True
                break
        if not found_record:
            print_log(
                f'{record} points to {path!r}, which does not exist; looking for the newest '
                f'checkpoint in {work_dir}',
                logger='current',
                level=logging.WARNING,
            )
    found = []
    for p in glob.glob(osp.join(glob.escape(work_dir), '*.pth')):
        m = _CKPT_RE.match(osp.basename(p))
        if m:
            found.append((int(m.group(2)), osp.getmtime(p), p))
    candidates += [p for *_, p in sorted(found, reverse=True)]
    bad: list[tuple[str, str]] = []
    seen: set[str] = set()
    for cand in candidates:
        real = osp.realpath(cand)
        if real in seen:
            continue
        seen.add(real)
        why = _readable(cand)
        if why is None:
            if bad:
                print_log(
                    f'newest checkpoint {bad[0][0]} is unreadable (truncated or corrupt? '
                    f'{bad[0][1]}); resuming from the previous intact checkpoint {cand}'
                    + (f' (also skipped: {[b for b, _ in bad[1:]]})' if len(bad) > 1 else ''),
                    logger='current',
                    level=logging.WARNING,
                )
            return cand
        bad.append((cand, why))
    if bad:
        print_log(
            f'no intact checkpoint in {work_dir}: {[b for b, _ in bad]} are unreadable',
            logger='current',
            level=logging.WARNING,
        )
    return None


def _to_plain(obj: Any, where: str, refuse_other: bool) -> Any:
    """``obj`` as data ``torch.load(weights_only=True)`` reads without extra globals.

    numpy arrays become tensors, numpy scalars Python numbers, ``HistoryBuffer`` a dict of
    its history. Other objects raise (``refuse_other``) or are dropped with a warning.
    """
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in 'biufc':
            return torch.from_numpy(np.ascontiguousarray(obj).copy())
        return _to_plain(obj.tolist(), where, refuse_other)
    if isinstance(obj, HistoryBuffer):
        return dict(
            __history_buffer__=True,
            log_history=_to_plain(obj._log_history, where, refuse_other),
            count_history=_to_plain(obj._count_history, where, refuse_other),
            max_length=int(obj.max_length),
        )
    if isinstance(obj, Mapping):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            pv = _to_plain(v, f'{where}.{k}', refuse_other)
            if pv is not _DROP:
                out[k] = pv
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_to_plain(v, f'{where}[{i}]', refuse_other) for i, v in enumerate(obj)]
        items = [v for v in items if v is not _DROP]
        return list(items) if isinstance(obj, list) else tuple(items)
    if refuse_other:
        raise TypeError(
            f'{where} holds a {type(obj).__module__}.{type(obj).__qualname__}, which a '
            'weights_only checkpoint cannot store; only tensors, numbers, strings and '
            'containers of them can be saved'
        )
    print_log(
        f'checkpoint: {where} ({type(obj).__qualname__}) is not plain data and is not saved',
        logger='current',
        level=logging.WARNING,
    )
    return _DROP


_DROP = object()


def _history_buffer(value: Any) -> Any:
    """A real ``HistoryBuffer`` from our plain form or an inert :class:`MMEngineStateStub`."""
    if isinstance(value, MMEngineStateStub):
        st = value.state if isinstance(value.state, dict) else {}
        return HistoryBuffer(
            np.asarray(st.get('_log_history', [])),
            np.asarray(st.get('_count_history', [])),
            int(st.get('max_length', 1000000)),
        )
    if isinstance(value, dict) and value.get('__history_buffer__'):

        def arr(x: Any) -> np.ndarray:
            return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

        return HistoryBuffer(
            arr(value['log_history']), arr(value['count_history']), int(value['max_length'])
        )
    return value


def _message_hub_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A message-hub state dict from a checkpoint, with real ``HistoryBuffer`` objects."""
    out = dict(state)
    out['log_scalars'] = OrderedDict(
        (k, _history_buffer(v)) for k, v in dict(state.get('log_scalars', {})).items()
    )
    for key in ('runtime_info', 'resumed_keys'):
        out.setdefault(key, OrderedDict())
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _group_hparams(group: Mapping[str, Any]) -> dict[str, Any]:
    """Configured values of a param group: base lr (``initial_lr``) and the rest, no params."""
    out = {k: v for k, v in group.items() if k not in ('params', 'lr', 'initial_lr')}
    out['lr'] = group.get('initial_lr', group.get('lr'))
    return out


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f'; did you mean {match[0]!r}?' if match else ''


class G2SDRunner(Runner):
    """``mmengine.runner.Runner`` with plain-data atomic checkpoints and exact, safe resume.

    Build it like mmengine's runner: ``G2SDRunner.from_cfg(cfg)``. Extra config key:
    ``resume_hparams`` (``'checkpoint'``, the default, or ``'config'``): after a resume,
    which optimizer / scheduler values win when they differ (see the module docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cfg = kwargs.get('cfg')
        mode = 'checkpoint' if cfg is None else cfg.get('resume_hparams', 'checkpoint')
        if mode not in RESUME_HPARAMS:
            raise ValueError(f'resume_hparams must be one of {RESUME_HPARAMS}, got {mode!r}')
        self.resume_hparams: str = mode
        train_cfg = kwargs.get('train_cfg')
        if isinstance(train_cfg, Mapping):
            self._check_train_cfg(train_cfg)
        super().__init__(*args, **kwargs)

    @staticmethod
    def _check_train_cfg(train_cfg: Mapping[str, Any]) -> None:
        for key in ('max_epochs', 'max_iters'):
            if key in train_cfg:
                value = train_cfg[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f'train_cfg.{key} must be a positive integer, got {value!r}: a run that '
                        'trains nothing would still export an untrained model'
                    )

    # ------------------------------------------------------------------ building
    def build_train_loop(self, loop: Any) -> Any:
        """mmengine's loop builder; epoch / iter loops become g2sd's resumable loops."""
        if isinstance(loop, dict):
            self._check_train_cfg(loop)
            loop_cfg = copy.deepcopy(loop)
            kind = loop_cfg.get('type')
            if kind is None and 'by_epoch' in loop_cfg:
                kind = 'EpochBasedTrainLoop' if loop_cfg.pop('by_epoch') else 'IterBasedTrainLoop'
            cls = None
            if kind in (_MMEpochLoop, _MMIterLoop):
                cls = _LOOP_TYPES[kind.__name__]
            elif isinstance(kind, str):  # 'mmengine.EpochBasedTrainLoop' keeps mmengine's
                cls = _LOOP_TYPES.get(kind[len('g2sd.') :] if kind.startswith('g2sd.') else kind)
            if cls is not None:
                loop_cfg.pop('type', None)
                return cls(**loop_cfg, runner=self, dataloader=self._train_dataloader)
        return super().build_train_loop(loop)

    def register_hooks(
        self, default_hooks: dict | None = None, custom_hooks: list | None = None
    ) -> None:
        """Check every hook config's arguments, then register the hooks as mmengine does."""
        for name, hook in (default_hooks or {}).items():
            if isinstance(hook, dict):
                self._check_hook_cfg(hook, f'default_hooks.{name}')
        for i, hook in enumerate(custom_hooks or []):
            if isinstance(hook, dict):
                self._check_hook_cfg(hook, f'custom_hooks[{i}]')
        super().register_hooks(default_hooks, custom_hooks)

    def _check_hook_cfg(self, hook: Mapping[str, Any], where: str) -> None:
        """Refuse arguments a hook does not take, naming the closest valid one."""
        from mmengine.hooks import CheckpointHook

        kind = hook.get('type')
        if isinstance(kind, type):
            cls = kind
        elif isinstance(kind, str):
            cls = HOOKS.get(kind)
            if cls is None:
                return  # mmengine raises its own KeyError when building
        else:
            return
        named, has_kwargs = init_arguments(cls)
        extra = [k for k in hook if k not in ('type', 'priority') and k not in named]
        if not extra:
            return
        if issubclass(cls, CheckpointHook):
            # CheckpointHook hands **kwargs to runner.save_checkpoint at the first save.
            taken = set(inspect.signature(type(self).save_checkpoint).parameters)
            passed = {'self', 'out_dir', 'filename', 'file_client_args', 'save_optimizer'}
            passed |= {'save_param_scheduler', 'meta', 'by_epoch', 'backend_args'}
            extra = [k for k in extra if k not in taken or k in passed]
        elif has_kwargs:
            return
        if extra:
            key = extra[0]
            raise ValueError(
                f'{where}: {cls.__name__} has no argument {key!r}{_closest(key, named)} '
                f'(valid: {sorted(named)})'
            )

    def wrap_model(self, model_wrapper_cfg: dict | None, model: nn.Module) -> nn.Module:
        """Revert SyncBN to BN without CUDA (gloo DDP refuses SyncBN), then wrap."""
        if not torch.cuda.is_available() and not is_model_wrapper(model):
            model = revert_sync_batchnorm(model)
        return super().wrap_model(model_wrapper_cfg, model)

    # ------------------------------------------------------------------ saving
    def _rng_payload(self) -> dict[str, Any]:
        """RNG states of every rank (collective under DDP)."""
        loop = self._train_loop
        epoch_rng = getattr(loop, 'epoch_rng', None)
        mine = dict(state=g2sd_loops.get_rng_state(), epoch_start=epoch_rng)
        states = all_gather_object(mine) if get_world_size() > 1 else [mine]
        return dict(
            world_size=len(states),
            states=[s['state'] for s in states],
            epoch_start=[s['epoch_start'] for s in states],
        )

    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args: dict | None = None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict | None = None,
        by_epoch: bool = True,
        backend_args: dict | None = None,
    ) -> None:
        """Save mmengine's checkpoint dict as plain data (plus RNG states), atomically.

        Call it on every rank (``CheckpointHook`` does): the RNG states are gathered from
        all ranks; only rank 0 writes. Arguments as mmengine's ``Runner.save_checkpoint``.

        Raises:
            TypeError: ``meta`` is not a dict, or optimizer / scheduler state that is not
                plain data.
        """
        if meta is None:
            meta = {}
        elif not isinstance(meta, dict):
            raise TypeError(f'meta should be a dict or None, but got {type(meta)}')
        rng = self._rng_payload()
        if not is_main_process():
            return
        if by_epoch:
            meta.setdefault('epoch', self.epoch + 1)
            meta.setdefault('iter', self.iter)
        else:
            meta.setdefault('epoch', self.epoch)
            meta.setdefault('iter', self.iter + 1)
        if file_client_args is not None and backend_args is not None:
            raise ValueError(
                '"file_client_args" and "backend_args" cannot be set at the same time.'
            )
        meta.update(
            cfg=self.cfg.pretty_text,
            seed=self.seed,
            experiment_name=self.experiment_name,
            time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
            mmengine_version=mmengine.__version__ + get_git_hash(),
        )
        if hasattr(self.train_dataloader.dataset, 'metainfo'):
            meta.update(dataset_meta=self.train_dataloader.dataset.metainfo)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint: dict[str, Any] = {
            'meta': _to_plain(meta, 'meta', refuse_other=False),
            'state_dict': weights_to_cpu(model.state_dict()),
            'message_hub': _to_plain(
                self.message_hub.state_dict(), 'message_hub', refuse_other=False
            ),
            'rng': rng,
        }
        if save_optimizer:
            if not isinstance(self.optim_wrapper, OptimWrapper):
                raise TypeError(
                    'self.optim_wrapper should be an `OptimWrapper` or `OptimWrapperDict` '
                    f'instance, but got {self.optim_wrapper}'
                )
            checkpoint['optimizer'] = _to_plain(
                _cpu(self.optim_wrapper.state_dict()), 'optimizer', refuse_other=True
            )
        if save_param_scheduler and self.param_schedulers is None:
            self.logger.warning(
                '`save_param_scheduler` is True but `self.param_schedulers` is None, so skip '
                'saving parameter schedulers'
            )
            save_param_scheduler = False
        if save_param_scheduler:
            if isinstance(self.param_schedulers, dict):
                scheds: Any = {
                    n: [s.state_dict() for s in ss] for n, ss in self.param_schedulers.items()
                }
            else:
                scheds = [s.state_dict() for s in self.param_schedulers]
            checkpoint['param_schedulers'] = _to_plain(
                scheds, 'param_schedulers', refuse_other=True
            )
        self.call_hook('before_save_checkpoint', checkpoint=checkpoint)
        if file_client_args is not None or backend_args is not None or not _is_local(out_dir):
            from mmengine.fileio import FileClient, join_path

            if file_client_args is not None:
                client = FileClient.infer_client(file_client_args, out_dir)
                filepath = client.join_path(out_dir, filename)
            else:
                filepath = join_path(out_dir, filename, backend_args=backend_args)
            save_checkpoint(
                checkpoint, filepath, file_client_args=file_client_args, backend_args=backend_args
            )
            return
        atomic_save(checkpoint, osp.join(out_dir, filename))

    # ------------------------------------------------------------------ loading
    def load_checkpoint(
        self,
        filename: str,
        map_location: str | Callable[..., Any] = 'cpu',
        strict: bool = False,
        revise_keys: list | None = None,
    ) -> dict:
        """``load_from``: plain weights (``weights_only``), loaded strictly, with a clear error.

        Local files are read by :func:`g2sd.checkpoint.load_file` (the one trust policy),
        other URLs by mmengine's loader (``weights_only`` under torch>=2.6).

        Raises:
            pickle.UnpicklingError: The file needs pickle globals beyond plain weights.
        """
        revise_keys = [(r'^module.', '')] if revise_keys is None else revise_keys
        checkpoint = self._read(
            filename, trusted=False, what='load_from', map_location=map_location
        )
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if _is_local(filename):
            # Strict through the one loader: a missing / extra / mis-shaped / integer tensor
            # is an error naming the keys (mmengine's own load is not strict, i.e. silent).
            load_pretrained(model, checkpoint, use='whole', source=filename)
        else:
            checkpoint = _load_checkpoint_to_model(
                model, checkpoint, strict, revise_keys=revise_keys
            )
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def _read(self, filename: str, *, trusted: bool, what: str, map_location: Any = 'cpu') -> dict:
        if _is_local(filename):
            try:
                checkpoint = load_file(filename, trusted=trusted)
            except CheckpointError as err:
                if what != 'load_from':
                    raise CheckpointError(
                        f'{what}={filename!r}: {err}. Resume only from checkpoints written by '
                        'g2sd / mmengine.'
                    ) from err
                raise pickle.UnpicklingError(
                    f'{what}={filename!r}: {err}. load_from takes plain weights; to continue a '
                    'run use --resume (resume=True), and to start from a g2sd run use its '
                    'exported student.pth / student.safetensors.'
                ) from err
        else:
            try:
                checkpoint = _load_checkpoint(filename, map_location=map_location)
            except pickle.UnpicklingError as err:
                raise pickle.UnpicklingError(
                    f'{what}={filename!r} could not be read with torch.load(weights_only=True): '
                    f'{str(err).splitlines()[0]}'
                ) from err
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                f'{what}={filename!r} holds a {type(checkpoint).__name__}, not a dict'
            )
        return checkpoint

    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location: str | Callable[..., Any] = 'default',
    ) -> None:
        """Resume a run: weights, iteration, message hub, optimizer, schedulers and RNG.

        mmengine's ``Runner.resume`` (meta epoch / iter, seed and dataset-meta checks,
        message hub, optimizer, schedulers, model weights), but the file is read with
        ``weights_only=True`` (never unpickling code), ``HistoryBuffer`` is rebuilt from plain
        data, the RNG states of this rank are restored, and restored optimizer / scheduler
        values that differ from the config are named in a warning; with
        ``resume_hparams='config'`` the config's values are taken instead.

        Args:
            filename: The checkpoint.
            resume_optimizer: Restore the optimizer state.
            resume_param_scheduler: Restore the scheduler states.
            map_location: Unused for local files (read on the CPU, then copied into the
                model / optimizer on their devices); passed to mmengine for URLs.
        """
        if map_location == 'default':
            from mmengine.device import get_device

            map_location = get_device()
        checkpoint = self._read(filename, trusted=True, what='resume', map_location=map_location)
        meta = checkpoint.get('meta')
        if not isinstance(meta, dict) or 'iter' not in meta or 'epoch' not in meta:
            raise CheckpointError(
                f'resume={filename!r} is not a training checkpoint (no meta epoch / iter); '
                'to start from plain weights use load_from'
            )
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        load_pretrained(model, checkpoint, use='whole', source=filename)
        self.logger.info(f'Load checkpoint from {filename}')

        self.train_loop._epoch = meta['epoch']
        self.train_loop._iter = meta['iter']

        resumed_seed = meta.get('seed', None)
        current_seed = self._randomness_cfg.get('seed')
        if resumed_seed is not None and resumed_seed != current_seed:
            if current_seed is not None:
                self.logger.warning(
                    f'The value of random seed in the checkpoint "{resumed_seed}" is different '
                    f'from the value in `randomness` config "{current_seed}"'
                )
            self._randomness_cfg.update(seed=resumed_seed)
            self.set_randomness(**self._randomness_cfg)

        dataset_meta = getattr(self.train_dataloader.dataset, 'metainfo', None)
        if pickle.dumps(meta.get('dataset_meta', None)) != pickle.dumps(
            _to_plain(dataset_meta, 'dataset_meta', refuse_other=False)
        ):
            self.logger.warning(
                'The dataset metainfo from the resumed checkpoint is different from the current '
                'training dataset, please check the correctness of the checkpoint or the '
                'training dataset.'
            )

        if 'message_hub' in checkpoint:
            self.message_hub.load_state_dict(_message_hub_state(checkpoint['message_hub']))

        self._resume_hparams(checkpoint, resume_optimizer, resume_param_scheduler, filename)
        self._resume_rng(checkpoint.get('rng'), filename)
        self._has_loaded = True
        self.logger.info(f'resumed epoch: {self.epoch}, iter: {self.iter}')

    def _resume_rng(self, rng: Any, filename: str) -> None:
        if not isinstance(rng, dict) or not rng.get('states'):
            self.logger.warning(
                f'{filename} holds no RNG states (not written by g2sd): the random stream '
                '(masks, crops) after the resume differs from an uninterrupted run'
            )
            return
        world, rank = get_world_size(), get_rank()
        if rng.get('world_size') != world:
            self.logger.warning(
                f'{filename} was saved by {rng.get("world_size")} processes, this run has '
                f'{world}: RNG states not restored'
            )
            return
        state, epoch_start = rng['states'][rank], (rng.get('epoch_start') or [None] * world)[rank]
        loop = self.train_loop
        if isinstance(loop, g2sd_loops._ResumableMixin):
            loop.resume_rng, loop.resume_epoch_rng = state, epoch_start
        else:
            g2sd_loops.set_rng_state(state)

    # ------------------------------------------------------------------ hparams
    def _optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        ow = self.optim_wrapper
        if hasattr(ow, 'optim_wrappers'):
            return [(f'optim_wrapper.{n}', w.optimizer) for n, w in ow.optim_wrappers.items()]
        return [('optimizer', ow.optimizer)]

    def _schedulers(self) -> list[tuple[str, Any]]:
        ps = self.param_schedulers
        if ps is None:
            return []
        if isinstance(ps, dict):
            return [
                (f'param_scheduler.{n}[{i}] ({type(s).__name__})', s)
                for n, ss in ps.items()
                for i, s in enumerate(ss)
                if hasattr(s, 'state_dict')
            ]
        return [
            (f'param_scheduler[{i}] ({type(s).__name__})', s)
            for i, s in enumerate(ps)
            if hasattr(s, 'state_dict')
        ]

    def _resume_hparams(
        self, checkpoint: dict, resume_optimizer: bool, resume_param_scheduler: bool, filename: str
    ) -> None:
        """Restore optimizer / schedulers; report (or undo) values that differ from the config."""
        has_optim = 'optimizer' in checkpoint and resume_optimizer
        if has_optim:
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
        if resume_param_scheduler and self.param_schedulers is None:
            self.logger.warning(
                '`resume_param_scheduler` is True but `self.param_schedulers` is None, so skip '
                'resuming parameter schedulers'
            )
            resume_param_scheduler = False
        has_sched = 'param_schedulers' in checkpoint and resume_param_scheduler
        if has_sched:
            self.param_schedulers = self.build_param_scheduler(self.param_schedulers)
        fresh_groups = [
            [
                dict((k, copy.deepcopy(v)) for k, v in g.items() if k != 'params')
                for g in opt.param_groups
            ]
            for _, opt in self._optimizers()
        ]
        fresh_scheds = [copy.deepcopy(s.state_dict()) for _, s in self._schedulers()]

        if has_optim:
            self.optim_wrapper.load_state_dict(checkpoint['optimizer'])
        if has_sched:
            saved = checkpoint['param_schedulers']
            if isinstance(self.param_schedulers, dict):
                for name, schedulers in self.param_schedulers.items():
                    for s, st in zip(schedulers, saved[name]):
                        s.load_state_dict(st)
            else:
                for s, st in zip(self.param_schedulers, saved):
                    s.load_state_dict(st)

        diffs: list[str] = []
        for (label, opt), fresh in zip(self._optimizers(), fresh_groups):
            if len(fresh) != len(opt.param_groups):
                continue
            seen: dict[tuple[str, str, str], list[int]] = {}
            for gi, (fg, rg) in enumerate(zip(fresh, opt.param_groups)):
                fh, rh = _group_hparams(fg), _group_hparams(rg)
                for k in fh:
                    if k in rh and not _same(fh[k], rh[k]):
                        seen.setdefault((k, repr(rh[k]), repr(fh[k])), []).append(gi)
            for (k, old, new), groups in seen.items():
                if len(groups) == 1:
                    which = f'group {groups[0]}'
                elif len(groups) == len(fresh):
                    which = f'groups (all {len(groups)})'
                else:
                    which = f'groups {groups[:8]}' + (' ...' if len(groups) > 8 else '')
                diffs.append(f'{label} {which} {k}: {old} (checkpoint) vs {new} (config)')
        if has_sched:
            for (label, s), fresh in zip(self._schedulers(), fresh_scheds):
                restored = s.state_dict()
                for k, v in fresh.items():
                    if k in _PROGRESS_KEYS or k not in restored:
                        continue
                    if not _same(v, restored[k]):
                        diffs.append(f'{label} {k}: {restored[k]!r} (checkpoint) vs {v!r} (config)')
        if not diffs:
            return
        listing = '\n  '.join(diffs)
        if self.resume_hparams == 'checkpoint':
            self.logger.warning(
                f'resumed from {filename}: these restored optimizer / scheduler values differ '
                f"from the config and are the ones used:\n  {listing}\nTo take the config's "
                'values instead, resume with --cfg-options resume_hparams=config.'
            )
            return
        # resume_hparams='config': config values, schedulers replayed to the resumed step.
        for (_, opt), fresh in zip(self._optimizers(), fresh_groups):
            for fg, rg in zip(fresh, opt.param_groups):
                rg.update(copy.deepcopy(fg))
        for (_, s), fresh in zip(self._schedulers(), fresh_scheds):
            s.load_state_dict(copy.deepcopy(fresh))
        self._replay_schedulers(int(checkpoint['meta']['iter']), int(checkpoint['meta']['epoch']))
        self.logger.warning(
            f"resumed from {filename} with resume_hparams=config: the config's values replace "
            f'the restored ones (schedulers replayed to iter {checkpoint["meta"]["iter"]}):'
            f'\n  {listing}'
        )

    def _replay_schedulers(self, n_iter: int, n_epoch: int) -> None:
        """Step the (fresh) schedulers as ParamSchedulerHook would have up to the resume point."""
        scheds = [s for _, s in self._schedulers()]
        by_iter = [s for s in scheds if not s.by_epoch]
        by_epoch = [s for s in scheds if s.by_epoch]
        per_epoch = len(self.train_dataloader) if isinstance(self.train_loop, _MMEpochLoop) else 0
        done = 0
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            for _ in range(n_epoch if per_epoch else 0):
                for _ in range(min(per_epoch, n_iter - done)):
                    for s in by_iter:
                        s.step()
                    done += 1
                for s in by_epoch:
                    s.step()
            for _ in range(n_iter - done):
                for s in by_iter:
                    s.step()

    def scale_lr(self, optim_wrapper: Any, auto_scale_lr: dict | None = None) -> None:
        """Linear lr scaling by the *effective* batch (mmengine ignores gradient accumulation).

        Effective batch = world size x per-GPU batch x ``optim_wrapper.accumulative_counts``,
        so a 4096-image recipe run as 8 GPUs x 256 x 2 keeps its lr, and the same config on
        4 GPUs without accumulation gets half of it.
        """
        if auto_scale_lr is None or not auto_scale_lr.get('enable', False):
            return
        if 'base_batch_size' not in auto_scale_lr:
            raise ValueError(f'auto_scale_lr needs base_batch_size, got {auto_scale_lr!r}')
        loader = self._train_dataloader
        bs = loader.batch_size if hasattr(loader, 'batch_size') else loader['batch_size']
        wrappers = (
            list(optim_wrapper.values()) if hasattr(optim_wrapper, 'values') else [optim_wrapper]
        )
        accum = getattr(wrappers[0], '_accumulative_counts', 1)
        real_bs = self.world_size * bs * accum
        ratio = real_bs / float(auto_scale_lr['base_batch_size'])
        self.logger.info(
            f'LR scaled by {ratio:g}: effective batch {real_bs} ({self.world_size} x {bs} x '
            f'{accum} accumulation) vs base batch {auto_scale_lr["base_batch_size"]}'
        )
        for wrapper in wrappers:
            for group in wrapper.optimizer.param_groups:
                group['lr'] = group['lr'] * ratio

    def load_or_resume(self) -> None:
        """Like mmengine, but auto-resume uses :func:`find_resume_checkpoint`."""
        if self._has_loaded:
            return
        if self._resume and self._load_from is None:
            resume_from = find_resume_checkpoint(self.work_dir)
            if resume_from is None:
                self.logger.info(f'no checkpoint to resume in {self.work_dir}; starting afresh')
                return
            self.logger.info(f'Auto resumed from the latest checkpoint {resume_from}.')
            self.resume(resume_from)
            self._has_loaded = True
            return
        super().load_or_resume()


def _cpu(obj: Any) -> Any:
    from mmengine.utils import apply_to

    return apply_to(obj, lambda x: hasattr(x, 'cpu'), lambda x: x.cpu())


def setup_cpu_distributed(cfg: Config) -> bool:
    """Make ``launcher='pytorch'`` (torchrun) work without CUDA.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` and builds DDP with
    ``device_ids=[LOCAL_RANK]``, both of which fail on CPU. Here a gloo process group is
    created first (the runner then skips its own init) and ``cfg.model_wrapper_cfg`` is
    set to ``MMDistributedDataParallel`` with ``device_ids=None``. Note that mmengine
    ignores the top-level ``find_unused_parameters`` once ``model_wrapper_cfg`` is set,
    so it is copied in. Does nothing with CUDA or another launcher (Slurm goes through
    mmengine unchanged).

    Args:
        cfg: The merged config (reads ``launcher``, ``env_cfg.dist_cfg.timeout``,
            ``find_unused_parameters``, ``model_wrapper_cfg``); updated in place.

    Returns:
        True if the CPU shim was applied.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not torch_dist.is_initialized():
        dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
        timeout = datetime.timedelta(seconds=int(dist_cfg.get('timeout', 1800)))
        torch_dist.init_process_group(backend='gloo', timeout=timeout)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if wrapper['type'] in ('MMDistributedDataParallel', 'MMSeparateDistributedDataParallel'):
        wrapper['device_ids'] = None
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return True


_AMP_TYPES = ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper')
_CPU_AMP_TYPES = ('g2sd.CPUAmpOptimWrapper', 'CPUAmpOptimWrapper')


def _type_name(t: Any) -> str:
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def configure_amp(cfg: Config, enable: bool = False) -> str | None:
    """Device-aware mixed precision for ``cfg.optim_wrapper`` (``tools/train.py --amp``).

    The mode comes from :func:`g2sd.engine.amp.choose_amp` and is logged once per process:

    - CUDA: ``AmpOptimWrapper`` with ``loss_scale='dynamic'`` (unless set), fp16; bf16 when
      the config's ``dtype`` is ``'bfloat16'`` and ``torch.cuda.is_bf16_supported()``
      (otherwise fp16 with a warning).
    - CPU with fast bf16 (AMX / AVX512-BF16): ``g2sd.CPUAmpOptimWrapper`` (bf16 autocast, no
      loss scaling), because mmengine's ``AmpOptimWrapper`` asserts a GPU. A config that
      already asks for ``AmpOptimWrapper`` is converted too, so GPU recipes run on CPU.
    - CPU without fast bf16: a warning naming the reason and a plain fp32 ``OptimWrapper``
      (emulated bf16 is slower than fp32).

    With AMP on, an ``AdamW`` optimizer without ``fused`` / ``foreach`` settings gets
    ``fused=True`` (PyTorch's fused CPU / CUDA kernel; same update rule).

    Args:
        cfg: The merged config; ``optim_wrapper`` is updated in place.
        enable: Turn AMP on (``--amp``). Without it only AMP configs are adapted.

    Returns:
        The resulting optim-wrapper type, or None when nothing changed.

    Raises:
        ValueError: ``enable`` without an ``optim_wrapper`` in the config, or an AMP
            ``dtype`` other than float16 / bfloat16.
    """
    from g2sd.engine.amp import choose_amp, log_once

    ow = cfg.get('optim_wrapper')
    if ow is None:
        if enable:
            raise ValueError('--amp needs an optim_wrapper in the config')
        return None
    kind = _type_name(ow.get('type', 'OptimWrapper'))
    is_amp = kind in _AMP_TYPES or kind in _CPU_AMP_TYPES
    if not (enable or is_amp):
        return None
    cuda = torch.cuda.is_available()
    if cuda and kind in _AMP_TYPES:
        print_log('AMP training is already enabled in your config.', logger='current')
    decision = choose_amp(ow.get('dtype'), cuda)
    log_once(decision)
    ow.type = decision.wrapper
    optimizer = ow.get('optimizer')
    if (
        decision.dtype is not None
        and optimizer is not None
        and _type_name(optimizer.get('type')) in ('AdamW', 'torch.optim.AdamW')
        and optimizer.get('fused') is None
        and optimizer.get('foreach') is None
    ):
        optimizer['fused'] = True  # one fused kernel instead of ~10 per parameter
    if decision.wrapper == 'AmpOptimWrapper':
        ow.setdefault('loss_scale', 'dynamic')
        ow.dtype = decision.dtype
        return decision.wrapper
    for key in ('loss_scale', 'use_fsdp'):
        ow.pop(key, None)
    if decision.dtype is None:
        ow.pop('dtype', None)
    else:
        ow.dtype = decision.dtype
    return decision.wrapper
