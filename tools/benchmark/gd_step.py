"""Benchmark one G2SD generic-distillation training step (ViT-S student, MAE ViT-B teacher).

Reports, for fp32 and AMP (bf16 autocast on CPU, fp16 on CUDA): images/s, achieved GFLOP/s
from an analytical FLOP count of the step, that figure as a fraction of the machine's
measured matmul peak (same dtype), peak memory above the built models, and the teacher's
share of the step time.

Example::

    python tools/benchmark/gd_step.py --batch-size 32 --iters 5
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

from g2sd.distill import G2SDDistiller
from g2sd.models import MaskedAutoencoderViT

STUDENT = dict(
    embed_dim=384,
    depth=12,
    num_heads=6,
    decoder_embed_dim=256,
    decoder_depth=4,
    decoder_num_heads=8,
    pixel_head=False,
)
TEACHER = dict(
    embed_dim=768,
    depth=12,
    num_heads=12,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
)


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


def block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (2 x multiply-adds) of one transformer block on ``tokens`` tokens."""
    linear = 2 * tokens * dim * (3 * dim + dim + 2 * int(dim * mlp_ratio))
    attention = 2 * 2 * tokens * tokens * dim  # q k^T and attn v
    return float(linear + attention)


def gd_step_flops(
    batch: int, img: int = 224, patch: int = 16, mask_ratio: float = 0.75, target_block: int = 4
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
    s, t = STUDENT, TEACHER
    s_fwd = (
        pe(s['embed_dim'])
        + s['depth'] * block_flops(vis, s['embed_dim'])
        + 2 * vis * s['embed_dim'] * s['decoder_embed_dim']
        + s['decoder_depth'] * block_flops(full, s['decoder_embed_dim'])
        + 2 * full * (s['decoder_embed_dim'] * 512 + 512 * 512)
    )
    t_fwd = (
        pe(t['embed_dim'])
        + t['depth'] * block_flops(vis, t['embed_dim'])
        + 2 * vis * t['embed_dim'] * t['decoder_embed_dim']
        + target_block * block_flops(full, t['decoder_embed_dim'])
    )
    return batch * (3 * s_fwd + t_fwd), batch * t_fwd


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


def run(mode: str, batch: int, iters: int, warmup: int, device: torch.device) -> Row:
    """Time ``iters`` GD training steps after ``warmup`` steps."""
    torch.manual_seed(0)
    model = G2SDDistiller(
        student=MaskedAutoencoderViT(**STUDENT),
        teacher=MaskedAutoencoderViT(**TEACHER),
        allow_random_teacher=True,
    ).to(device)
    model.train()
    opt = torch.optim.AdamW(
        (p for p in model.parameters() if p.requires_grad),
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
    )
    amp_dtype = torch.bfloat16 if device.type == 'cpu' else torch.float16
    use_amp = mode == 'amp'
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and device.type == 'cuda')
    imgs = torch.randn(batch, 3, 224, 224, device=device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        base_mem = rss_mib()  # models, optimizer (no state yet) and the input batch

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = model(imgs)['loss_gd']
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / iters
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else peak_rss_mib()

    noise = model.student.make_noise(imgs)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            model.teacher_targets(imgs, noise)
    sync(device)
    t_teacher = (time.perf_counter() - t0) / iters

    flops, _ = gd_step_flops(batch)
    peak_gflops = matmul_peak(device, amp_dtype if use_amp else torch.float32)
    achieved = flops / dt / 1e9
    return Row(
        mode,
        batch,
        batch / dt,
        dt * 1e3,
        flops / 1e9,
        achieved,
        peak_gflops,
        achieved / peak_gflops,
        peak - base_mem,
        t_teacher / dt,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--iters', type=int, default=5, help='timed steps')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--modes', nargs='+', default=['fp32', 'amp'], choices=['fp32', 'amp'])
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda if available)')
    parser.add_argument('--json', default=None, help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    rows = [run(m, args.batch_size, args.iters, args.warmup, device) for m in args.modes]
    header = (
        f'{"mode":<5} {"batch":>5} {"img/s":>8} {"step ms":>9} {"GFLOP/step":>10} '
        f'{"GFLOP/s":>9} {"peak GF/s":>9} {"of peak":>8} {"mem MiB":>8} {"teacher":>8}'
    )
    out = [
        f'G2SD GD step, ViT-S student + MAE ViT-B teacher, 224 px, {device} '
        f'({torch.get_num_threads()} threads)',
        header,
    ]
    for r in rows:
        out.append(
            f'{r.mode:<5} {r.batch:>5} {r.img_per_s:>8.1f} {r.step_ms:>9.0f} '
            f'{r.gflop_per_step:>10.1f} {r.gflop_per_s:>9.1f} {r.peak_gflop_per_s:>9.1f} '
            f'{r.frac_of_peak:>8.1%} {r.peak_mem_mib:>8.0f} {r.teacher_share:>8.1%}'
        )
    sys.stdout.write('\n'.join(out) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
