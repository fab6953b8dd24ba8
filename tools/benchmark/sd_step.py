"""Benchmark one specific-distillation training step vs the same step without distillation.

Classification SD in G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) adds a frozen MAE ViT-B teacher forward to every
student step. This tool times ``train_step`` of :class:`g2sd.DistillModel` (mixup / cutmix in
the preprocessor, teacher forward under no-grad, student forward + backward, AdamW step
with layer decay) with distillation on, and the identical step with
``distillation_stopped=True`` (student only), and prints images/s and the teacher's share
of the step time.

Example::

    python tools/benchmark/sd_step.py --student s --batch-size 128 --amp     # GPU
    python tools/benchmark/sd_step.py --student ti --batch-size 16 --iters 3 # CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

# torch / mmengine / g2sd are imported in main() so that --help answers at once.

STUDENTS = {'ti': dict(embed_dim=192, num_heads=3), 's': dict(embed_dim=384, num_heads=6)}
TEACHER = dict(embed_dim=768, num_heads=12)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description='Images/s of a G2SD classification SD step (ViT-Ti/S student, ViT-B '
        'teacher) vs the same step without distillation.'
    )
    parser.add_argument('--student', choices=sorted(STUDENTS), default='s')
    parser.add_argument('--batch-size', type=int, default=64, help='even (mixup)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--depth', type=int, default=12, help='blocks (12; fewer for smoke tests)')
    parser.add_argument('--iters', type=int, default=5, help='timed steps per mode')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per mode')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--amp', action='store_true', help='fp16 (CUDA) / bf16 (CPU) autocast')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.batch_size % 2:
        parser.error(f'--batch-size must be even and >= 2 (mixup), got {args.batch_size}')
    return args


def build_model(args: argparse.Namespace) -> Any:
    """The SD wrapper of the paper's classification run (random weights)."""
    from g2sd.cls import ClsDataPreprocessor, DistilledVisionTransformer, ViTClassifier
    from g2sd.distill import DistillModel
    from g2sd.models.vit import VisionTransformer

    common = dict(img_size=args.img_size, patch_size=16, depth=args.depth, num_classes=1000)
    student = ViTClassifier(
        backbone=DistilledVisionTransformer(**common, **STUDENTS[args.student]),
        data_preprocessor=ClsDataPreprocessor(
            num_classes=1000, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1
        ),
    )
    return DistillModel(
        student=student,
        teacher=VisionTransformer(global_pool='avg', **common, **TEACHER),
        allow_random_teacher=True,
        student_loss_weight=0.5,
        distill=[
            dict(
                student='backbone.head_dist',
                teacher='head',
                loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5),
            )
        ],
    )


def build_optim_wrapper(model: Any, amp: bool, device: Any) -> Any:
    """AdamW with layer decay 0.75 (the recipe), AMP wrapper when asked."""
    import torch
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from g2sd.engine.optim import CPUAmpOptimWrapper
    from g2sd.optim import layer_decay_param_groups

    groups = layer_decay_param_groups(model, base_lr=4e-3, weight_decay=0.05, layer_decay_rate=0.75)
    for g in groups:
        g.pop('names', None)
    opt = torch.optim.AdamW(groups, lr=4e-3)
    if not amp:
        return OptimWrapper(optimizer=opt)
    if device.type == 'cuda':
        return AmpOptimWrapper(optimizer=opt, loss_scale='dynamic')
    return CPUAmpOptimWrapper(optimizer=opt)


def time_steps(model: Any, ow: Any, data: dict, iters: int, warmup: int, device: Any) -> float:
    """Seconds per ``train_step``."""
    import torch

    for _ in range(warmup):
        model.train_step(data, ow)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        model.train_step(data, ow)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point; returns the table rows."""
    args = parse_args(argv)
    import torch

    import g2sd.cls  # noqa: F401  (registers the losses the wrapper builds)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    )
    torch.manual_seed(0)
    model = build_model(args).to(device)
    model.train()
    ow = build_optim_wrapper(model, args.amp, device)
    g = torch.Generator().manual_seed(0)
    data = dict(
        inputs=torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g),
        data_samples=torch.randint(0, 1000, (args.batch_size,), generator=g),
    )
    rows = []
    for mode, stopped in (('SD (student + ViT-B teacher)', False), ('no SD (student only)', True)):
        model.distillation_stopped = stopped
        sec = time_steps(model, ow, data, args.iters, args.warmup, device)
        rows.append(dict(mode=mode, step_ms=sec * 1e3, img_per_s=args.batch_size / sec))
    teacher_share = 1.0 - rows[1]['step_ms'] / rows[0]['step_ms']
    what = (
        f'ViT-{dict(ti="Ti", s="S")[args.student]} student, {device.type}, '
        f'batch {args.batch_size}, '
        f'{args.img_size} px, depth {args.depth}, {"AMP" if args.amp else "fp32"}'
    )
    lines = [f'SD training step ({what})', f'{"mode":<32}{"step ms":>10}{"img/s":>10}']
    for r in rows:
        lines.append(f'{r["mode"]:<32}{r["step_ms"]:>10.1f}{r["img_per_s"]:>10.1f}')
    lines.append(
        f'teacher share of the SD step: {teacher_share:.1%}; SD runs at '
        f'{rows[0]["img_per_s"] / rows[1]["img_per_s"]:.2f}x the speed of plain fine-tuning'
    )
    sys.stdout.write('\n'.join(lines) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(setting=what, rows=rows, teacher_share=teacher_share), f, indent=2)
    return rows


if __name__ == '__main__':
    main()
