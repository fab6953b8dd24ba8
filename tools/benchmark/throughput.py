"""Inference throughput of the G2SD students vs the MAE ViT-B teacher (images/s).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) reports that the ViT-Ti / ViT-S students run 5.84x / 2.62x faster than the
ViT-B teacher at 224 px. This tool measures eval-mode forward passes (students with the
distillation token and both heads, the teacher with global pooling + fc_norm, i.e. exactly
the deployed models) under ``torch.inference_mode`` and prints images/s and the speed-up
over ViT-B next to the paper's ratios.

Example::

    python tools/benchmark/throughput.py --batch-size 256 --amp          # GPU
    python tools/benchmark/throughput.py --batch-size 16 --iters 5       # CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

# torch / g2sd are imported in main() so that --help answers at once.

ARCHS = {
    'ti': dict(embed_dim=192, num_heads=3, student=True),
    's': dict(embed_dim=384, num_heads=6, student=True),
    'b': dict(embed_dim=768, num_heads=12, student=False),
}
NAMES = {'ti': 'G2SD-Ti (ViT-Ti + dist)', 's': 'G2SD-S (ViT-S + dist)', 'b': 'MAE ViT-B teacher'}
PAPER_SPEEDUP = {'ti': 5.84, 's': 2.62, 'b': 1.0}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description='Inference images/s of the G2SD ViT-Ti / ViT-S students vs the ViT-B '
        'teacher (paper: 5.84x and 2.62x).'
    )
    parser.add_argument('--models', default='ti,s,b', help='comma list of ti, s, b')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--depth', type=int, default=12, help='blocks (12; fewer for smoke tests)')
    parser.add_argument('--iters', type=int, default=10, help='timed batches per model')
    parser.add_argument('--warmup', type=int, default=3, help='untimed batches per model')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--amp', action='store_true', help='autocast (fp16 on CUDA, bf16 on CPU)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', help='also write the rows to this JSON file')
    return parser.parse_args(argv)


def build(key: str, img_size: int, depth: int) -> Any:
    """The deployed model of ``key`` (eval mode)."""
    from g2sd.cls.vit import DistilledVisionTransformer
    from g2sd.models.vit import VisionTransformer

    spec = dict(ARCHS[key])
    student = spec.pop('student')
    kw = dict(img_size=img_size, patch_size=16, depth=depth, num_classes=1000, **spec)
    if student:
        return DistilledVisionTransformer(**kw).eval()
    return VisionTransformer(global_pool='avg', **kw).eval()


def measure(model: Any, x: Any, iters: int, warmup: int, amp: bool) -> float:
    """Images per second of ``model(x)`` (eval, inference mode)."""
    import torch

    device = x.device
    ctx = (
        torch.autocast(
            device.type, dtype=torch.float16 if device.type == 'cuda' else torch.bfloat16
        )
        if amp
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        for _ in range(warmup):
            model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return x.shape[0] * iters / elapsed


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point; returns the table rows."""
    args = parse_args(argv)
    import torch

    keys = [k.strip().lower() for k in args.models.split(',') if k.strip()]
    bad = [k for k in keys if k not in ARCHS]
    if bad or not keys:
        raise SystemExit(f'--models must be a comma list of {sorted(ARCHS)}, got {args.models!r}')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    )
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    rows = []
    for key in keys:
        model = build(key, args.img_size, args.depth).to(device)
        ips = measure(model, x, args.iters, args.warmup, args.amp)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append(dict(model=NAMES[key], key=key, params_m=params, img_per_s=ips))
        del model
    base = next((r['img_per_s'] for r in rows if r['key'] == 'b'), None)
    what = f'{device.type}, batch {args.batch_size}, {args.img_size} px, depth {args.depth}'
    what += ', AMP' if args.amp else ', fp32'
    lines = [
        f'inference throughput ({what})',
        f'{"model":<26}{"params (M)":>11}{"img/s":>10}{"vs ViT-B":>10}{"paper":>8}',
    ]
    for r in rows:
        r['speedup'] = r['img_per_s'] / base if base else None
        sp = f'{r["speedup"]:.2f}x' if base else '-'
        lines.append(
            f'{r["model"]:<26}{r["params_m"]:>11.2f}{r["img_per_s"]:>10.1f}{sp:>10}'
            f'{PAPER_SPEEDUP[r["key"]]:>7.2f}x'
        )
    sys.stdout.write('\n'.join(lines) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(setting=what, rows=rows), f, indent=2)
    return rows


if __name__ == '__main__':
    main()
