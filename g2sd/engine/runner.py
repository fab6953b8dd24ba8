"""The one mmengine runner of g2sd, plus the config fixes ``tools/train.py`` applies.

Every stage of G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) -- generic distillation and the task-specific
cls / det / seg runs -- trains through :class:`G2SDRunner`, an ``mmengine.runner.Runner``
that adds:

- atomic checkpoints: written to a hidden temporary name in the same folder, flushed,
  then ``os.replace``-d, so a killed write never leaves a truncated ``iter_N.pth`` and
  ``last_checkpoint`` (written by ``CheckpointHook`` after the save returns) never points
  to one;
- resume of its own checkpoints under torch>=2.6: mmengine checkpoints hold
  ``HistoryBuffer`` / numpy objects that ``torch.load(weights_only=True)`` refuses. Only
  inside :meth:`G2SDRunner.resume`, and only for that one local file, full unpickling is
  allowed, after checking that the pickle references no global outside the set an
  mmengine checkpoint needs. ``load_from`` (third-party weights) stays ``weights_only``;
- auto-resume that survives a missing / empty ``last_checkpoint`` (falls back to the
  newest ``iter_*.pth`` / ``epoch_*.pth`` in the work dir);
- CPU: SyncBN reverted to BN before DDP wrapping (gloo DDP refuses SyncBN).

Helpers: :func:`setup_cpu_distributed` (torchrun + gloo without CUDA) and
:func:`configure_amp` (device-aware ``--amp``).
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import logging
import os
import os.path as osp
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.dist import master_only
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

__all__ = [
    'G2SDRunner',
    'configure_amp',
    'find_resume_checkpoint',
    'setup_cpu_distributed',
    'trusted_checkpoint_load',
]

# Globals an mmengine checkpoint may reference beyond torch's weights_only allow-list
# (message hub HistoryBuffers with numpy arrays / scalars, numpy dtypes).
_TRUSTED_GLOBAL_PATTERNS = (
    r'mmengine\.logging\.history_buffer\.HistoryBuffer',
    r'numpy\.(_?core\.multiarray\.(scalar|_reconstruct)|ndarray|dtype)',
    r'numpy\.dtypes\.\w+DType',
    r'numpy\.(float|int|uint|bool_|complex)\w*',
    r'builtins\.(getattr|set|frozenset|slice|complex|bytearray)',
    r'_codecs\.encode',
    r'collections\.(OrderedDict|defaultdict|deque)',
)
_CKPT_RE = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def _is_local(path: str) -> bool:
    return '://' not in path and not re.match(r'^[\w-]+:', path)


def _check_checkpoint_globals(path: str) -> None:
    """Refuse to fully unpickle a file that references unexpected globals."""
    get_unsafe = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if get_unsafe is None:  # torch < 2.5: nothing to inspect with
        return
    unexpected = [
        g for g in get_unsafe(path) if not any(re.fullmatch(p, g) for p in _TRUSTED_GLOBAL_PATTERNS)
    ]
    if unexpected:
        raise pickle.UnpicklingError(
            f'refusing to resume from {path}: it references globals that an mmengine '
            f'checkpoint does not need: {unexpected}. Resume only from checkpoints written by '
            'g2sd / mmengine; load third-party weights with load_from (weights_only).'
        )


@contextlib.contextmanager
def trusted_checkpoint_load(filename: str) -> Iterator[None]:
    """Let mmengine's local checkpoint loader fully unpickle ``filename`` (only it).

    mmengine's ``load_from_local`` calls ``torch.load`` without ``weights_only``; since
    torch 2.6 that means ``weights_only=True``, which refuses the ``HistoryBuffer`` and
    numpy objects of mmengine's own checkpoints. Inside this context the local loader
    uses ``weights_only=False`` for this one resolved path (after checking its globals)
    and behaves as before for every other file. Nothing process-wide is changed
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is never set).

    Args:
        filename: The checkpoint being resumed.
    """
    schemes = CheckpointLoader._schemes
    original: Callable[..., Any] | None = schemes.get('')
    if original is None or not _is_local(filename):
        yield
        return
    target = osp.realpath(osp.expanduser(filename))

    def load_local(name: str, map_location: Any) -> Any:
        if osp.realpath(osp.expanduser(name)) != target:
            return original(name, map_location)
        if not osp.isfile(target):
            raise FileNotFoundError(f'{name} can not be found.')
        _check_checkpoint_globals(target)
        return torch.load(target, map_location=map_location, weights_only=False)

    schemes[''] = load_local
    try:
        yield
    finally:
        CheckpointLoader._schemes[''] = original


def find_resume_checkpoint(work_dir: str) -> str | None:
    """Checkpoint to auto-resume from in ``work_dir``.

    Reads ``last_checkpoint``; if it is missing, empty or points to a file that does not
    exist (also tried relative to ``work_dir``), falls back to the newest
    ``iter_*.pth`` / ``epoch_*.pth`` in ``work_dir`` (by step number, then mtime).

    Returns:
        A path, or None when there is nothing to resume.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(record):
        with open(record) as f:
            path = f.read().strip()
        for cand in (path, osp.join(work_dir, osp.basename(path))):
            if path and osp.isfile(cand):
                return cand
        print_log(
            f'{record} points to {path!r}, which does not exist; looking for the newest '
            f'checkpoint in {work_dir}',
            logger='current',
            level=logging.WARNING,
        )
    found = []
    for p in glob.glob(osp.join(work_dir, '*.pth')):
        m = _CKPT_RE.match(osp.basename(p))
        if m:
            found.append((int(m.group(2)), osp.getmtime(p), p))
    return max(found)[2] if found else None


class G2SDRunner(Runner):
    """``mmengine.runner.Runner`` with atomic checkpoints and safe resume (see module doc).

    Build it like mmengine's runner: ``G2SDRunner.from_cfg(cfg)``.
    """

    def wrap_model(self, model_wrapper_cfg: dict | None, model: nn.Module) -> nn.Module:
        """Revert SyncBN to BN without CUDA (gloo DDP refuses SyncBN), then wrap."""
        if not torch.cuda.is_available() and not is_model_wrapper(model):
            model = revert_sync_batchnorm(model)
        return super().wrap_model(model_wrapper_cfg, model)

    @master_only
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
        """Save like mmengine, but atomically for local folders (temp file + ``os.replace``)."""
        kwargs = dict(
            file_client_args=file_client_args,
            save_optimizer=save_optimizer,
            save_param_scheduler=save_param_scheduler,
            meta=meta,
            by_epoch=by_epoch,
            backend_args=backend_args,
        )
        if file_client_args is not None or backend_args is not None or not _is_local(out_dir):
            super().save_checkpoint(out_dir, filename, **kwargs)
            return
        os.makedirs(out_dir, exist_ok=True)
        for stale in glob.glob(osp.join(out_dir, f'.{glob.escape(filename)}.tmp-*')):
            with contextlib.suppress(OSError):
                os.remove(stale)  # left by a killed process
        tmp_name = f'.{filename}.tmp-{os.getpid()}'
        tmp_path, final = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            super().save_checkpoint(out_dir, tmp_name, **kwargs)
            with open(tmp_path, 'rb') as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp_path)
            raise

    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location: str | Callable[..., Any] = 'default',
    ) -> None:
        """Resume from one of our own checkpoints (full unpickling for this file only)."""
        with trusted_checkpoint_load(filename):
            super().resume(
                filename,
                resume_optimizer=resume_optimizer,
                resume_param_scheduler=resume_param_scheduler,
                map_location=map_location,
            )

    def load_checkpoint(
        self,
        filename: str,
        map_location: str | Callable[..., Any] = 'cpu',
        strict: bool = False,
        revise_keys: list | None = None,
    ) -> dict:
        """mmengine's ``load_checkpoint`` (``weights_only`` outside resume) with a clear error."""
        revise_keys = [(r'^module.', '')] if revise_keys is None else revise_keys
        try:
            return super().load_checkpoint(filename, map_location, strict, revise_keys)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(
                f'load_from={filename!r} could not be read with torch.load(weights_only=True): '
                f'{str(err).splitlines()[0]}. load_from takes plain weights; to continue a run '
                'use --resume (resume=True), and to start from a g2sd run use its exported '
                'student.pth / student.safetensors.'
            ) from err

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

    - CUDA: ``AmpOptimWrapper`` with ``loss_scale='dynamic'`` (unless set) and the
      config's ``dtype`` or ``'float16'``.
    - CPU: ``g2sd.CPUAmpOptimWrapper`` (bf16 autocast, no loss scaling), because mmengine's
      ``AmpOptimWrapper`` asserts a GPU. A config that already asks for
      ``AmpOptimWrapper`` is converted too, so GPU recipes run on CPU.

    Args:
        cfg: The merged config; ``optim_wrapper`` is updated in place.
        enable: Turn AMP on (``--amp``). Without it only AMP configs are adapted.

    Returns:
        The resulting optim-wrapper type, or None when nothing changed.

    Raises:
        ValueError: ``enable`` without an ``optim_wrapper`` in the config.
    """
    ow = cfg.get('optim_wrapper')
    if ow is None:
        if enable:
            raise ValueError('--amp needs an optim_wrapper in the config')
        return None
    kind = _type_name(ow.get('type', 'OptimWrapper'))
    is_amp = kind in _AMP_TYPES or kind in _CPU_AMP_TYPES
    if not (enable or is_amp):
        return None
    if torch.cuda.is_available():
        if kind in _AMP_TYPES:
            print_log('AMP training is already enabled in your config.', logger='current')
        ow.type = 'AmpOptimWrapper'
        ow.setdefault('loss_scale', 'dynamic')
        if ow.get('dtype') is None:
            ow.dtype = 'float16'
        return 'AmpOptimWrapper'
    if ow.get('dtype') not in (None, 'bfloat16', torch.bfloat16):
        print_log(
            f'AMP dtype {ow.get("dtype")!r} is not available on CPU; using bfloat16',
            logger='current',
            level=logging.WARNING,
        )
    ow.type = 'g2sd.CPUAmpOptimWrapper'
    ow.dtype = 'bfloat16'
    for key in ('loss_scale', 'use_fsdp'):
        ow.pop(key, None)
    print_log('no CUDA: AMP runs as bfloat16 CPU autocast (g2sd.CPUAmpOptimWrapper)', 'current')
    return 'g2sd.CPUAmpOptimWrapper'
