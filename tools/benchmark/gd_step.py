"""Benchmark one G2SD generic-distillation training step (ViT-S student, MAE ViT-B teacher).

G2SD: Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771. Reports, for fp32 and AMP (bf16 autocast on CPU, fp16 -- or bf16 with
``--amp-dtype bf16`` -- on CUDA): images/s, achieved GFLOP/s from an analytical FLOP count of
the step, that figure as a fraction of the machine's measured matmul peak (same dtype), peak
memory above the built models, and the teacher's share of the step time.

With ``--compare-official DIR`` (an export of github.com/pengzhiliang/G2SD that the user
has; nothing of it is copied here), the official GD step (its ``models_mae.py`` student and
teacher, the loss of its ``engine_distill.py`` and its ``NativeScalerWithGradNormCount``)
is run alternately with ours, same sizes, batch and autocast, and a table of ratios is
printed. Import shims for its timm-0.3.2 / torch-1.x era code (``torch._six``,
``np.float``) are installed at import time; DIR is not modified.

Examples::

    python tools/benchmark/gd_step.py --batch-size 32 --iters 5
    python tools/benchmark/gd_step.py --compare-official /path/to/G2SD --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import importlib
import json
import resource
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from g2sd.distill import G2SDDistiller
from g2sd.models import MaskedAutoencoderViT

#: (student, teacher, image size, patch size) of each preset; 's-b' is the paper's GD-S.
PRESETS: dict[str, tuple[dict, dict, int, int]] = {
    's-b': (
        dict(
            embed_dim=384,
            depth=12,
            num_heads=6,
            decoder_embed_dim=256,
            decoder_depth=4,
            decoder_num_heads=8,
        ),
        dict(
            embed_dim=768,
            depth=12,
            num_heads=12,
            decoder_embed_dim=512,
            decoder_depth=8,
            decoder_num_heads=16,
        ),
        224,
        16,
    ),
    'tiny': (  # smoke tests
        dict(
            embed_dim=32,
            depth=2,
            num_heads=2,
            decoder_embed_dim=16,
            decoder_depth=1,
            decoder_num_heads=2,
        ),
        dict(
            embed_dim=48,
            depth=2,
            num_heads=2,
            decoder_embed_dim=24,
            decoder_depth=2,
            decoder_num_heads=2,
        ),
        32,
        8,
    ),
}
STUDENT, TEACHER, _, _ = PRESETS['s-b']
TARGET_BLOCK = 4
MASK_RATIO = 0.75


@dataclass
class Row:
    """One benchmark result row."""

    mode: str
    batch: int
    img_per_s: float
    step_ms: float
    gflop_per_step: float
    gflop_per_s: float
    peak_gflop_per_s: float
    frac_of_peak: float
    peak_mem_mib: float
    teacher_share: float
    impl: str = 'ours'


def block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (2 x multiply-adds) of one transformer block on ``tokens`` tokens."""
    linear = 2 * tokens * dim * (3 * dim + dim + 2 * int(dim * mlp_ratio))
    attention = 2 * 2 * tokens * tokens * dim  # q k^T and attn v
    return float(linear + attention)


def gd_step_flops(
    batch: int,
    img: int = 224,
    patch: int = 16,
    mask_ratio: float = MASK_RATIO,
    target_block: int = TARGET_BLOCK,
    student: dict | None = None,
    teacher: dict | None = None,
) -> tuple[float, float]:
    """Analytical FLOPs of one GD step: (total, teacher part).

    Student: forward + backward (2x forward) of the encoder on cls + visible tokens, the
    decoder on all tokens and the projector. Teacher: forward of the encoder on the same
    visible tokens and of ``target_block`` decoder blocks on all tokens.
    """
    n = (img // patch) ** 2
    vis = int(n * (1 - mask_ratio)) + 1
    full = n + 1
    pe = lambda d: 2 * n * (3 * patch * patch) * d  # noqa: E731  patch embedding conv
    s, t = student or STUDENT, teacher or TEACHER
    proj = t['decoder_embed_dim']
    s_fwd = (
        pe(s['embed_dim'])
        + s['depth'] * block_flops(vis, s['embed_dim'])
        + 2 * vis * s['embed_dim'] * s['decoder_embed_dim']
        + s['decoder_depth'] * block_flops(full, s['decoder_embed_dim'])
        + 2 * full * (s['decoder_embed_dim'] * proj + proj * proj)
    )
    t_fwd = (
        pe(t['embed_dim'])
        + t['depth'] * block_flops(vis, t['embed_dim'])
        + 2 * vis * t['embed_dim'] * t['decoder_embed_dim']
        + target_block * block_flops(full, t['decoder_embed_dim'])
    )
    return batch * (3 * s_fwd + t_fwd), batch * t_fwd


@functools.cache
def matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int = 2048, reps: int = 10
) -> float:
    """Measured GFLOP/s of a square matmul in ``dtype`` (the machine's practical peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) to finish."""
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _status_kib(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return float(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: best effort


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); no-op elsewhere."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def rss_mib() -> float:
    """Current resident set size (MiB)."""
    return _status_kib('VmRSS') / 1024.0


def peak_rss_mib() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (MiB)."""
    return _status_kib('VmHWM') / 1024.0


def trim_memory() -> None:
    """Free what the previous run left: Python garbage and glibc's free heap pages (Linux)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)


def amp_dtype_of(device: torch.device, name: str) -> torch.dtype:
    """The autocast dtype: bf16 on CPU; fp16 on CUDA unless ``name == 'bf16'``."""
    if device.type == 'cpu' or name == 'bf16':
        return torch.bfloat16
    return torch.float16


def adamw(params: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW of the GD recipe (lr 1e-4, betas (0.9, 0.95), wd 0.05), fused where supported."""
    kwargs = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / dtype
        return torch.optim.AdamW(params, **kwargs)


@dataclass
class Built:
    """One implementation's GD step, ready to time."""

    step: Callable[[], None]
    teacher: Callable[[], Any]


def build_ours(
    preset: str,
    batch: int,
    device: torch.device,
    use_amp: bool,
    dtype: torch.dtype,
    teacher_amp_weights: bool = False,
) -> Built:
    """Our GD step: ``G2SDDistiller`` (teacher's matmul weights held in the AMP dtype with
    ``teacher_amp_weights``), fused AdamW."""
    student, teacher, img, patch = PRESETS[preset]
    geo = dict(img_size=img, patch_size=patch)
    model = G2SDDistiller(
        student=MaskedAutoencoderViT(**student, **geo, pixel_head=False),
        teacher=MaskedAutoencoderViT(**teacher, **geo),
        target_block=min(TARGET_BLOCK, teacher['decoder_depth']),
        mask_ratio=MASK_RATIO,
        allow_random_teacher=True,
    ).to(device)
    model.train()
    model.teacher_amp_weights = teacher_amp_weights
    opt = adamw([p for p in model.parameters() if p.requires_grad], device)
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and dtype == torch.float16)
    imgs = torch.randn(batch, 3, img, img, device=device)
    noise = model.student.make_noise(imgs)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            loss = model(imgs)['loss_gd']
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def teacher_fwd() -> Any:
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            return model.teacher_targets(imgs, noise)

    return Built(step, teacher_fwd)


# ------------------------------------------------------------- the official step
def _install_shims() -> None:
    """Let G2SD's torch-1.x / numpy-1.2x era code import on current versions."""
    if 'torch._six' not in sys.modules:
        six = types.ModuleType('torch._six')
        six.inf = float('inf')
        six.string_classes = (str, bytes)
        sys.modules['torch._six'] = six
    import numpy as np

    for name, value in (('float', float), ('int', int), ('bool', bool)):
        if name not in np.__dict__:
            setattr(np, name, value)


def official_code_dir(root: str | Path) -> Path:
    """The folder of the official ``models_mae.py``: ``DIR/G2SD`` or ``DIR`` itself.

    Raises:
        ValueError: Neither holds a ``models_mae.py``.
    """
    root = Path(root)
    for cand in (root / 'G2SD', root):
        if (cand / 'models_mae.py').is_file():
            return cand
    raise ValueError(
        f'--compare-official {str(root)!r}: no G2SD/models_mae.py or models_mae.py there '
        '(pass an export of github.com/pengzhiliang/G2SD)'
    )


@functools.cache
def load_official(root: str) -> tuple[types.ModuleType, Any]:
    """Import the official ``models_mae`` and its loss scaler class from ``root``.

    Returns:
        (models_mae module, ``NativeScalerWithGradNormCount`` class of its ``util/misc.py``,
        or None when that module does not import).
    """
    code = official_code_dir(root)
    _install_shims()
    sys.path.insert(0, str(code))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            models_mae = importlib.import_module('models_mae')
            try:
                scaler_cls = importlib.import_module('util.misc').NativeScalerWithGradNormCount
            except (ImportError, AttributeError):
                scaler_cls = None
    finally:
        sys.path.remove(str(code))
    return models_mae, scaler_cls


class _Scaler:
    """The official ``NativeScalerWithGradNormCount`` step (fallback when it does not import):
    scaled backward, unscale, total grad norm, step, update."""

    def __init__(self, enabled: bool) -> None:
        self._scaler = torch.amp.GradScaler('cuda', enabled=enabled)

    def __call__(self, loss: torch.Tensor, optimizer: Any, parameters: Any = None) -> Any:
        self._scaler.scale(loss).backward()
        self._scaler.unscale_(optimizer)
        grads = [p.grad.detach() for p in parameters if p.grad is not None]
        norm = torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)
        self._scaler.step(optimizer)
        self._scaler.update()
        return norm


def build_official(
    root: str,
    preset: str,
    batch: int,
    device: torch.device,
    use_amp: bool,
    dtype: torch.dtype,
) -> Built:
    """The official GD step (``engine_distill.train_one_epoch``, one iteration).

    Its CUDA ``torch.cuda.amp.autocast()`` becomes ``torch.autocast(device, dtype)``, so on a
    CPU it runs the same bf16 autocast as ours. The optimizer is torch AdamW over timm's
    weight-decay groups, as in ``main_distill.py``.
    """
    models_mae, scaler_cls = load_official(root)
    student, teacher, img, patch = PRESETS[preset]
    common = dict(
        img_size=img,
        patch_size=patch,
        in_chans=3,
        mlp_ratio=4,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        supervise_all=True,
    )
    t_model = models_mae.MaskedAutoencoderViT(
        **teacher, **common, teacher=True, suplayer=min(TARGET_BLOCK, teacher['decoder_depth'])
    ).to(device)
    s_model = models_mae.MaskedAutoencoderViT(
        **student,
        **common,
        encoder_pred_channel=teacher['embed_dim'],
        decoder_pred_channel=teacher['decoder_embed_dim'],
    ).to(device)
    for p in t_model.parameters():
        p.requires_grad = False
    s_model.train()
    try:
        from timm.optim import param_groups_weight_decay

        groups = param_groups_weight_decay(s_model, 0.05)
    except ImportError:
        groups = [p for p in s_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch.cuda.amp.GradScaler on a CPU: disabled
        if scaler_cls is not None and (device.type == 'cuda' or not torch.cuda.is_available()):
            scaler = scaler_cls()
        else:
            scaler = _Scaler(enabled=device.type == 'cuda')
    imgs = torch.randn(batch, 3, img, img, device=device)
    n = (img // patch) ** 2
    noise0 = torch.rand(batch, n, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            noise = torch.rand(batch, n, device=device)
            _, dec_t, _, pre_t, _, _ = t_model(imgs, noise, mask_ratio=MASK_RATIO)
            out = s_model(imgs, noise, mask_ratio=MASK_RATIO)
            pred_dec, pre_feat = out[0], out[4]
            labels_dec = nn.LayerNorm(dec_t.shape[-1], eps=1e-6, elementwise_affine=False)(dec_t)
            loss_dec = F.smooth_l1_loss(pred_dec, labels_dec, beta=2.0)
            labels = nn.LayerNorm(pre_t.shape[-1], eps=1e-6, elementwise_affine=False)(pre_t)
            loss_feat = F.smooth_l1_loss(pre_feat, labels.to(device), beta=2.0)
        loss = 0.0 * loss_feat + loss_dec
        loss.item()
        scaler(loss, opt, parameters=s_model.parameters())
        opt.zero_grad()

    def teacher_fwd() -> Any:
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            return t_model(imgs, noise0, mask_ratio=MASK_RATIO)

    return Built(step, teacher_fwd)


# ------------------------------------------------------------------ measuring
def measure(
    impl: str,
    mode: str,
    args: argparse.Namespace,
    device: torch.device,
) -> Row:
    """Build one implementation, time ``args.iters`` steps after ``args.warmup``."""
    trim_memory()
    torch.manual_seed(0)
    use_amp = mode == 'amp'
    dtype = amp_dtype_of(device, args.amp_dtype)
    if impl == 'official':
        built = build_official(
            args.compare_official, args.preset, args.batch_size, device, use_amp, dtype
        )
    else:
        built = build_ours(
            args.preset, args.batch_size, device, use_amp, dtype, args.teacher_amp_weights == 'on'
        )
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        base_mem = rss_mib()  # models, optimizer (no state yet) and the input batch
    for _ in range(args.warmup):
        built.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        built.step()
    sync(device)
    dt = (time.perf_counter() - t0) / args.iters
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else peak_rss_mib()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if device.type == 'cuda':
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            built.step()
            sync(device)
        key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        table = prof.key_averages().table(
            sort_by=key, row_limit=args.profile, max_name_column_width=44
        )
        sys.stdout.write(f'profile of one step: {impl} {mode}, top {args.profile} by {key}\n')
        sys.stdout.write(table + '\n')
    with torch.no_grad():
        built.teacher()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            built.teacher()
        sync(device)
    t_teacher = (time.perf_counter() - t0) / args.iters
    student, teacher, img, patch = PRESETS[args.preset]
    flops, _ = gd_step_flops(
        args.batch_size,
        img,
        patch,
        target_block=min(TARGET_BLOCK, teacher['decoder_depth']),
        student=student,
        teacher=teacher,
    )
    peak_gflops = matmul_peak(device, dtype if use_amp else torch.float32)
    achieved = flops / dt / 1e9
    del built
    return Row(
        mode,
        args.batch_size,
        args.batch_size / dt,
        dt * 1e3,
        flops / 1e9,
        achieved,
        peak_gflops,
        achieved / peak_gflops,
        peak - base_mem,
        t_teacher / dt,
        impl,
    )


def compare_table(rows: list[Row], device: torch.device, dtype: torch.dtype) -> tuple[str, list]:
    """The markdown table official vs ours (medians over rounds) and its JSON records."""
    lines = ['| | official G2SD | ours | ratio |', '|---|---|---|---|']
    summary = []
    for mode in dict.fromkeys(r.mode for r in rows):
        pick = {
            impl: [r for r in rows if r.mode == mode and r.impl == impl]
            for impl in ('official', 'ours')
        }
        if not pick['official'] or not pick['ours']:
            continue
        med = {
            impl: (
                statistics.median(r.img_per_s for r in rs),
                statistics.median(r.peak_mem_mib for r in rs),
                statistics.median(r.frac_of_peak for r in rs),
            )
            for impl, rs in pick.items()
        }
        (o_ips, o_mem, _), (u_ips, u_mem, u_frac) = med['official'], med['ours']
        speed = u_ips / o_ips
        memory = u_mem / o_mem if o_mem > 0 else float('nan')
        label = 'fp32' if mode == 'fp32' else f'{str(dtype).split(".")[-1]} autocast'
        lines.append(
            f'| {label} | {o_ips:.2f} img/s, +{o_mem:.0f} MiB | {u_ips:.2f} img/s '
            f'({u_frac:.0%} of the {"fp32" if mode == "fp32" else "AMP"} matmul peak), '
            f'+{u_mem:.0f} MiB | {speed:.2f}x, memory {memory:.2f}x |'
        )
        summary.append(
            dict(
                mode=mode,
                official_img_per_s=o_ips,
                ours_img_per_s=u_ips,
                speed_ratio=speed,
                official_peak_mem_mib=o_mem,
                ours_peak_mem_mib=u_mem,
                memory_ratio=memory,
                ours_frac_of_peak=u_frac,
                rounds=len(pick['ours']),
            )
        )
    return '\n'.join(lines), summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (exits with status 2 on a bad one)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--iters', type=int, default=5, help='timed steps')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--modes', nargs='+', default=['fp32', 'amp'], choices=['fp32', 'amp'])
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda if available)')
    parser.add_argument(
        '--amp-dtype',
        default='auto',
        choices=['auto', 'fp16', 'bf16'],
        help='CUDA autocast dtype (auto: fp16); CPU is always bf16',
    )
    parser.add_argument(
        '--preset', default='s-b', choices=sorted(PRESETS), help="sizes ('tiny': smoke tests)"
    )
    parser.add_argument(
        '--compare-official',
        metavar='DIR',
        default=None,
        help='export of github.com/pengzhiliang/G2SD: run its GD step alternately with ours',
    )
    parser.add_argument(
        '--rounds', type=int, default=1, help='alternations official / ours per mode'
    )
    parser.add_argument(
        '--teacher-amp-weights',
        choices=['on', 'off'],
        default='off',
        help="ours: hold the teacher's matmul weights in the AMP dtype (on) or let autocast "
        'cast them every step (off, the library default: no extra copy)',
    )
    parser.add_argument(
        '--profile',
        type=int,
        default=0,
        metavar='N',
        help='after timing, print the torch.profiler table (top N ops by self time) of one step',
    )
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', default=None, help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    if args.profile < 0:
        parser.error(f'--profile must be >= 0, got {args.profile}')
    for name in ('batch_size', 'iters', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.compare_official is not None:
        try:
            official_code_dir(args.compare_official)
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the steps (alternating with the official one), print, write JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {args.device}: CUDA is not available')
    impls = ['official', 'ours'] if args.compare_official else ['ours']
    rows = [  # the order flips every round, so neither side always runs first
        measure(impl, mode, args, device)
        for rnd in range(args.rounds)
        for mode in args.modes
        for impl in (impls if rnd % 2 == 0 else impls[::-1])
    ]
    student, teacher, img, _ = PRESETS[args.preset]
    header = (
        f'{"impl":<8} {"mode":<5} {"batch":>5} {"img/s":>8} {"step ms":>9} {"GFLOP/step":>10} '
        f'{"GFLOP/s":>9} {"peak GF/s":>9} {"of peak":>8} {"mem MiB":>8} {"teacher":>8}'
    )
    names = {'s-b': 'ViT-S student + MAE ViT-B teacher', 'tiny': 'tiny student + tiny teacher'}
    out = [
        f'G2SD GD step, {names.get(args.preset, args.preset)}, {img} px, {device} '
        f'({torch.get_num_threads()} threads)',
        header,
    ]
    for r in rows:
        out.append(
            f'{r.impl:<8} {r.mode:<5} {r.batch:>5} {r.img_per_s:>8.1f} {r.step_ms:>9.0f} '
            f'{r.gflop_per_step:>10.1f} {r.gflop_per_s:>9.1f} {r.peak_gflop_per_s:>9.1f} '
            f'{r.frac_of_peak:>8.1%} {r.peak_mem_mib:>8.0f} {r.teacher_share:>8.1%}'
        )
    result: Any = [asdict(r) for r in rows]
    if args.compare_official:
        table, summary = compare_table(rows, device, amp_dtype_of(device, args.amp_dtype))
        out += ['', table]
        result = dict(rows=result, summary=summary, official=str(args.compare_official))
    sys.stdout.write('\n'.join(out) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
