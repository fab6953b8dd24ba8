"""Which mixed precision ``--amp`` should use on this machine.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) trains its students with mixed precision. What that means depends on the
device:

- CUDA: fp16 autocast with dynamic loss scaling (mmengine ``AmpOptimWrapper``), or bf16
  when the config asks for ``dtype='bfloat16'`` and the GPU supports it;
- CPU: bf16 autocast (``g2sd.CPUAmpOptimWrapper``) only where the CPU has fast bf16
  matmuls (AMX or AVX512-BF16). Without them bf16 is emulated and a step is *slower*
  than fp32 (measured 1.7x slower on an AVX2 machine), so ``--amp`` falls back to fp32
  with a warning that names the reason.

:func:`cpu_bf16_support` is the one detection function (tests monkeypatch it);
:func:`choose_amp` turns it into a decision, which :func:`g2sd.engine.runner.configure_amp`
applies and logs once per process.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ['AmpDecision', 'choose_amp', 'cpu_bf16_support', 'cuda_bf16_support', 'log_once']

#: ``/proc/cpuinfo`` flags that mean fast bf16 matmuls (oneDNN uses them).
FAST_BF16_FLAGS = ('amx_bf16', 'avx512_bf16')
_LOGGED: set[str] = set()


@dataclass(frozen=True)
class AmpDecision:
    """What ``--amp`` does on this machine.

    Attributes:
        wrapper: Optim-wrapper type: ``'AmpOptimWrapper'``, ``'g2sd.CPUAmpOptimWrapper'``
            or ``'OptimWrapper'`` (fp32, AMP declined).
        dtype: Autocast dtype name (``'float16'`` / ``'bfloat16'``), None for fp32.
        reason: One sentence for the log (why this mode).
        warn: The decision departs from what was asked (log as a warning).
    """

    wrapper: str
    dtype: str | None
    reason: str
    warn: bool = False


def _cpu_flags(path: str = '/proc/cpuinfo') -> set[str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith('flags'):
            return set(line.split(':', 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU runs bf16 matmuls natively, and the evidence.

    Checks ``/proc/cpuinfo`` for ``amx_bf16`` / ``avx512_bf16`` (Linux) and PyTorch's
    ``torch.backends.cpu.get_cpu_capability()`` (``'AMX'`` or a capability string naming
    bf16, where a build reports it). The environment variable ``G2SD_CPU_BF16=1`` / ``0``
    overrides the answer (e.g. a CPU whose flags are hidden by a hypervisor).

    Returns:
        (fast, evidence): ``evidence`` names the flag or capability found, or what was
        found instead (e.g. ``"CPU capability 'AVX2', no amx_bf16 / avx512_bf16 flag"``).
    """
    forced = os.environ.get('G2SD_CPU_BF16', '').strip()
    if forced in ('0', '1'):
        return forced == '1', f'G2SD_CPU_BF16={forced}'
    if forced:
        raise ValueError(f"G2SD_CPU_BF16 must be '0' or '1', got {forced!r}")
    capability = str(torch.backends.cpu.get_cpu_capability())
    flags = _cpu_flags()
    found = [f for f in FAST_BF16_FLAGS if f in flags]
    if found:
        return True, f'CPU flag {found[0]} (capability {capability!r})'
    if 'AMX' in capability.upper() or 'BF16' in capability.upper():
        return True, f'CPU capability {capability!r}'
    return False, f'CPU capability {capability!r}, no {" / ".join(FAST_BF16_FLAGS)} flag'


def cuda_bf16_support() -> bool:
    """Whether the current GPU computes in bf16 natively (Ampere or newer, or ROCm).

    Emulated bf16 (``including_emulation``) is not counted: it is slower than fp16. When the
    device cannot be queried, the config's request is trusted (True).
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except (RuntimeError, AssertionError):
        return True


def choose_amp(requested_dtype: str | torch.dtype | None, cuda: bool) -> AmpDecision:
    """The mixed-precision mode for a run that asked for AMP.

    Args:
        requested_dtype: The config's ``optim_wrapper.dtype`` (None: the device default).
        cuda: Train on CUDA.

    Returns:
        The :class:`AmpDecision`.

    Raises:
        ValueError: ``requested_dtype`` is not float16 / bfloat16 / None.
    """
    name = {torch.float16: 'float16', torch.bfloat16: 'bfloat16'}.get(
        requested_dtype, requested_dtype
    )
    if name in ('fp16', 'half'):
        name = 'float16'
    if name in ('bf16',):
        name = 'bfloat16'
    if name not in (None, 'float16', 'bfloat16'):
        raise ValueError(f"AMP dtype must be 'float16' or 'bfloat16', got {requested_dtype!r}")
    if cuda:
        if name == 'bfloat16':
            if cuda_bf16_support():
                return AmpDecision('AmpOptimWrapper', 'bfloat16', 'CUDA: bf16 autocast (config)')
            return AmpDecision(
                'AmpOptimWrapper',
                'float16',
                'CUDA: this GPU has no bf16 support; using fp16 autocast with loss scaling',
                warn=True,
            )
        return AmpDecision('AmpOptimWrapper', 'float16', 'CUDA: fp16 autocast, dynamic loss scale')
    fast, evidence = cpu_bf16_support()
    if not fast:
        return AmpDecision(
            'OptimWrapper',
            None,
            f'no CUDA and no fast bf16 on this CPU ({evidence}): bf16 autocast would be '
            'emulated and slower than fp32, so AMP is off and training runs in fp32',
            warn=True,
        )
    note = ''
    warn = False
    if name == 'float16':
        note = '; the config asked for float16, which CPU autocast does not train with'
        warn = True
    return AmpDecision(
        'g2sd.CPUAmpOptimWrapper',
        'bfloat16',
        f'no CUDA: bf16 CPU autocast (g2sd.CPUAmpOptimWrapper), fast bf16: {evidence}{note}',
        warn=warn,
    )


def log_once(decision: AmpDecision, logger: str | logging.Logger = 'current') -> bool:
    """Log ``decision`` (warning if ``decision.warn``) the first time it is seen.

    Returns:
        True if it was logged now, False if it had been logged before in this process.
    """
    from mmengine.logging import print_log

    key = f'{decision.wrapper}|{decision.dtype}|{decision.reason}'
    if key in _LOGGED:
        return False
    _LOGGED.add(key)
    level = logging.WARNING if decision.warn else logging.INFO
    print_log(f'AMP: {decision.reason}', logger=logger, level=level)
    return True
