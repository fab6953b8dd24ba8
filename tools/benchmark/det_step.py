"""Benchmark one FRS specific-distillation step of ViTDet Mask R-CNN vs the student alone.

Detection SD in G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771; official code G2SD_det_dis) adds a frozen
ViTDet-B teacher to every student step: backbone + SimpleFPN + RPN head only, in eval mode,
without gradients, in the same autocast (``g2sd.det.rpn_teacher_forward``), and FRS losses on
the P2-P6 maps (after a per-level 3x3 conv adapter) and the RPN objectness. This tool builds
``model`` of ``configs/det/vitdet_g2sd_{ti,s}.py`` (random weights, ``allow_random_teacher``)
and times ``train_step`` (preprocessing with the batch pad, teacher, student forward +
backward, AdamW with layer decay 0.7 as the config's constructor builds it) with FRS on and
the identical step with ``distillation_stopped=True`` (the student Mask R-CNN alone). It
prints, per student: images/s, the teacher's own time and its share of the SD step (the
teacher forward is timed on its own, around ``run_teacher``), peak memory, and whether every
trainable parameter received a gradient (DDP then needs no ``find_unused_parameters``).

Inputs are synthetic: random uint8 images with ``--num-boxes`` random boxes per image, each
with an elliptical mask inside its box (mmdet ``DetDataSample`` with ``gt_instances``).

Memory: ``peak MiB`` is the peak during the timed mode (CUDA: ``max_memory_allocated``; CPU:
the process's peak RSS, ``VmHWM``); ``step MiB`` is that peak minus what was resident before
the mode started (all weights, teacher included), i.e. activations + gradients + AdamW state
(a fresh optimizer per mode). CPU RSS figures are approximate (the allocator may keep freed
pages).

Example::

    python tools/benchmark/det_step.py --model ti,s --batch-size 8 --amp fp16   # GPU, 1024 px
    python tools/benchmark/det_step.py --model ti --img-size 256 --iters 2      # CPU
    python tools/benchmark/det_step.py --model ti --img-size 128 --depth 2 --iters 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# torch / mmengine / mmdet / g2sd are imported in the functions so that --help answers at once.

ROOT = Path(__file__).resolve().parents[2]
SD_CONFIG = 'configs/det/vitdet_g2sd_{model}.py'
NAMES = {'ti': 'ViT-Ti', 's': 'ViT-S'}
MODES = (('SD (student + ViTDet-B teacher)', False), ('no SD (student only)', True))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description='Images/s, teacher share and peak memory of a G2SD FRS training step '
        '(ViTDet Mask R-CNN, ViT-Ti/S student, ViTDet-B teacher) vs the student alone.'
    )
    parser.add_argument('--model', default='ti,s', help='comma list of ti, s (default ti,s)')
    parser.add_argument(
        '--config',
        default=SD_CONFIG,
        help=f'SD config whose model is benchmarked; {{model}} is replaced (default {SD_CONFIG})',
    )
    parser.add_argument('--batch-size', type=int, default=2, help='images per step')
    parser.add_argument(
        '--img-size', type=int, default=1024, help='square input, a multiple of 32 (paper: 1024)'
    )
    parser.add_argument(
        '--depth',
        type=int,
        default=12,
        help='ViT blocks of student and teacher (12; fewer for quick checks; global attention '
        'blocks are those of (2, 5, 8, 11) below the depth, else the last block)',
    )
    parser.add_argument('--num-boxes', type=int, default=8, help='random objects per image')
    parser.add_argument(
        '--rois',
        type=int,
        default=None,
        help='RoIs sampled per image for the box / mask heads (default: the config, 512); '
        'fewer for quick CPU checks (the 4conv1fc box and 4-conv mask heads cost the same '
        'at every input size and dominate small CPU runs)',
    )
    parser.add_argument('--iters', type=int, default=5, help='timed steps per mode')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per mode')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument(
        '--amp',
        choices=('none', 'fp16', 'bf16'),
        default='none',
        help='autocast dtype (fp16: CUDA only, dynamic loss scale; bf16: CUDA or CPU)',
    )
    parser.add_argument(
        '--act-checkpoint', action='store_true', help='activation checkpointing in the student'
    )
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    keys = [k.strip().lower() for k in args.model.split(',') if k.strip()]
    bad = [k for k in keys if k not in NAMES]
    if bad or not keys:
        parser.error(f'--model must be a comma list of {sorted(NAMES)}, got {args.model!r}')
    args.models = list(dict.fromkeys(keys))
    if args.img_size < 64 or args.img_size % 32:
        parser.error(f'--img-size must be a multiple of 32 and >= 64, got {args.img_size}')
    for name in ('batch_size', 'depth', 'iters', 'num_boxes') + (
        ('rois',) if args.rois is not None else ()
    ):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    return args


# ------------------------------------------------------------------ models and data
def resize_detector(
    det: dict,
    img_size: int,
    depth: int,
    act_checkpoint: bool | None = None,
    rois: int | None = None,
) -> dict:
    """A copy of an ``mmdet.MaskRCNN`` config of ours at another input size / depth.

    Args:
        det: Detector config (``configs/_base_/models/vitdet_mask_rcnn.py`` layout).
        img_size: Square input size: the ViT's ``img_size`` and the fixed training pad.
        depth: ViT blocks; global attention blocks are kept where below ``depth``, else the
            last block is global.
        act_checkpoint: Override the backbone's activation checkpointing (None: keep).
        rois: Override the RoIs sampled per training image (``train_cfg.rcnn.sampler.num``).

    Returns:
        The changed copy (no pretrained backbone file) as a ``ConfigDict`` (mmdet reads
        ``train_cfg.rpn`` as attributes).
    """
    from mmengine.config import ConfigDict

    det = ConfigDict(copy.deepcopy(dict(det)))
    bb = det['backbone']
    bb.update(img_size=img_size, depth=depth, pretrained=None)
    glob = tuple(i for i in bb.get('global_attn_indexes', ()) if i < depth)
    if bb.get('window_size', 0):
        bb['global_attn_indexes'] = glob or (depth - 1,)
    if act_checkpoint is not None:
        bb['act_checkpoint'] = act_checkpoint
    if rois is not None:
        det['train_cfg']['rcnn']['sampler']['num'] = rois
    for aug in det.get('data_preprocessor', {}).get('batch_augments') or ():
        if 'size' in aug:
            aug['size'] = (img_size, img_size)
    return det


def synthetic_batch(batch: int, img_size: int, num_boxes: int, num_classes: int, seed: int) -> dict:
    """``dict(inputs, data_samples)`` as mmdet's ``PackDetInputs`` gives it (random objects).

    Each image: uint8 (3, H, W) noise, ``num_boxes`` boxes of 1/16 to 1/2 of the side,
    labels in ``[0, num_classes)``, one filled ellipse inside each box as its mask.
    """
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(img_size) + 0.5, torch.arange(img_size) + 0.5, indexing='ij'
    )
    inputs, samples = [], []
    for i in range(batch):
        inputs.append(
            torch.randint(0, 256, (3, img_size, img_size), dtype=torch.uint8, generator=g)
        )
        wh = torch.randint(max(img_size // 16, 4), img_size // 2, (num_boxes, 2), generator=g)
        xy = torch.rand(num_boxes, 2, generator=g) * (img_size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1).float()
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx, ry = wh[:, 0] / 2, wh[:, 1] / 2
        inside = ((xx[None] - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
            (yy[None] - cy[:, None, None]) / ry[:, None, None]
        ) ** 2 <= 1
        gt = InstanceData(
            bboxes=HorizontalBoxes(boxes),
            labels=torch.randint(0, num_classes, (num_boxes,), generator=g),
            masks=BitmapMasks(inside.numpy().astype(np.uint8), img_size, img_size),
        )
        sample = DetDataSample(
            metainfo=dict(
                img_id=i,
                img_path=f'synthetic_{i}.png',
                ori_shape=(img_size, img_size),
                img_shape=(img_size, img_size),
                scale_factor=(1.0, 1.0),
                flip=False,
                flip_direction=None,
            )
        )
        sample.gt_instances = gt
        sample.ignored_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.zeros(0, 4)), labels=torch.zeros(0, dtype=torch.long)
        )
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def build_sd_model(args: argparse.Namespace, key: str) -> Any:
    """``model`` of the SD config for ``key`` at the benchmark's size, random weights."""
    from mmengine.config import Config

    import g2sd.det  # noqa: F401  (registers backbone, neck, adapter, FRS losses, teacher fwd)
    from g2sd.distill import DistillModel

    path = Path(args.config.format(model=key))
    cfg = Config.fromfile(str(path if path.is_absolute() else ROOT / path))
    model = cfg.model.to_dict()
    if model.get('type') not in ('g2sd.DistillModel', 'DistillModel'):
        raise ValueError(f'{path}: model.type must be g2sd.DistillModel, got {model.get("type")!r}')
    model.pop('type')
    model.update(
        student=resize_detector(
            model['student'], args.img_size, args.depth, args.act_checkpoint, args.rois
        ),
        teacher=resize_detector(model['teacher'], args.img_size, args.depth),
        teacher_checkpoint=None,
        allow_random_teacher=True,
    )
    optim_cfg = cfg.optim_wrapper.to_dict()
    return DistillModel(**model), optim_cfg


def build_optim_wrapper(model: Any, optim_cfg: dict, amp: str, device: Any) -> Any:
    """The config's optimizer (layer-decay constructor) with the wrapper ``amp`` needs."""
    from mmengine.optim import build_optim_wrapper as build

    cfg = copy.deepcopy(optim_cfg)
    for key in ('dtype', 'loss_scale'):
        cfg.pop(key, None)
    if amp == 'none':
        cfg['type'] = 'OptimWrapper'
    elif device.type == 'cuda':
        cfg.update(type='AmpOptimWrapper', dtype='float16' if amp == 'fp16' else 'bfloat16')
        if amp == 'fp16':
            cfg['loss_scale'] = 'dynamic'
    else:
        cfg.update(type='g2sd.CPUAmpOptimWrapper', dtype='bfloat16')
    return build(model, cfg)


# ------------------------------------------------------------------------ measuring
def sync(device: Any) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    import torch

    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (0 where unavailable)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def memory_mark(device: Any) -> float:
    """Reset the peak counter and return the memory in use now (MiB)."""
    import torch

    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, AttributeError):  # freed heap pages back to the OS
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    with contextlib.suppress(OSError), open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # Linux: reset VmHWM to the current RSS
    return _status_mib('VmRSS')


def memory_peak(device: Any) -> float:
    """Peak memory since :func:`memory_mark` (MiB): CUDA allocated, else peak RSS."""
    import torch

    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mib('VmHWM')


def timed(fn: Callable[..., Any], device: Any, spent: list[float]) -> Callable[..., Any]:
    """``fn`` that appends its synchronised wall time (s) to ``spent``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(device)
        spent.append(time.perf_counter() - t0)
        return out

    return wrapper


def record_missing_grads(ow: Any, params: dict[str, Any], missing: set[str]) -> None:
    """Make ``ow.step`` add to ``missing`` the names in ``params`` without a gradient.

    The check runs between backward and the optimizer step of every ``train_step`` (a
    loop over the parameters, negligible next to the step).
    """
    step = ow.step

    def checked_step(**kwargs: Any) -> None:
        missing.update(n for n, p in params.items() if p.requires_grad and p.grad is None)
        step(**kwargs)

    ow.step = checked_step


def run_model(args: argparse.Namespace, key: str, device: Any) -> list[dict[str, Any]]:
    """The SD and the no-SD row of one student."""
    import torch

    torch.manual_seed(0)
    model, optim_cfg = build_sd_model(args, key)
    model = model.to(device)
    model.train()
    num_classes = int(model.student.roi_head.bbox_head.num_classes)
    data = synthetic_batch(args.batch_size, args.img_size, args.num_boxes, num_classes, seed=0)
    teacher_mib = sum(p.numel() * p.element_size() for p in model.teacher.parameters()) / 2**20
    spent: list[float] = []
    model.run_teacher = timed(model.run_teacher, device, spent)
    student_params = {f'student.{n}': p for n, p in model.student.named_parameters()}
    rows = []
    for mode, stopped in MODES:
        model.distillation_stopped = stopped
        ow = build_optim_wrapper(model, optim_cfg, args.amp, device)
        # SD: student + adapters must all receive gradients; no SD: the student's own.
        params = dict(model.named_parameters()) if not stopped else student_params
        missing: set[str] = set()
        record_missing_grads(ow, params, missing)
        base = memory_mark(device)
        for _ in range(args.warmup):
            model.train_step(data, ow)
        sync(device)
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            model.train_step(data, ow)
        sync(device)
        sec = (time.perf_counter() - t0) / args.iters
        peak = memory_peak(device)
        teacher_sec = sum(spent) / args.iters
        teacher_grads = sum(p.grad is not None for p in model.teacher.parameters())
        rows.append(
            dict(
                model=key,
                mode=mode,
                distill=not stopped,
                step_ms=sec * 1e3,
                img_per_s=args.batch_size / sec,
                teacher_ms=teacher_sec * 1e3,
                teacher_share=teacher_sec / sec,
                peak_mib=peak,
                step_mib=peak - base,
                teacher_weights_mib=teacher_mib,
                params_checked=len(params),
                params_without_grad=sorted(missing),
                teacher_params_with_grad=teacher_grads,
            )
        )
        del ow
    del model
    gc.collect()
    return rows


def format_table(rows: list[dict[str, Any]], what: str) -> list[str]:
    """Readable lines of the table and the per-student summaries."""
    head = (
        f'{"student":<8}{"mode":<33}{"step ms":>10}{"img/s":>9}{"teacher ms":>12}'
        f'{"teacher %":>11}{"peak MiB":>10}{"step MiB":>10}'
    )
    lines = [f'FRS SD training step, ViTDet Mask R-CNN ({what})', head, '-' * len(head)]
    for r in rows:
        share = f'{r["teacher_share"]:.1%}' if r['distill'] else '-'
        t_ms = f'{r["teacher_ms"]:.1f}' if r['distill'] else '-'
        lines.append(
            f'{NAMES[r["model"]]:<8}{r["mode"]:<33}{r["step_ms"]:>10.1f}{r["img_per_s"]:>9.2f}'
            f'{t_ms:>12}{share:>11}{r["peak_mib"]:>10.0f}{r["step_mib"]:>10.0f}'
        )
    for key in dict.fromkeys(r['model'] for r in rows):
        sd, nosd = (r for r in rows if r['model'] == key)
        lines.append(
            f'{NAMES[key]}: teacher {sd["teacher_share"]:.1%} of the SD step '
            f'(target <= 40% for ViT-S); SD step = {sd["step_ms"] / nosd["step_ms"]:.2f}x '
            f'the student-only step; teacher weights {sd["teacher_weights_mib"]:.0f} MiB'
        )
        for r in (sd, nosd):
            who = 'student + adapters' if r['distill'] else 'student'
            if r['params_without_grad']:
                got = 'NO, without gradient: ' + ', '.join(r['params_without_grad'][:10])
            else:
                got = 'yes'
            lines.append(
                f'  {r["mode"]}: every {who} parameter got a gradient '
                f'({r["params_checked"]} tensors): {got}; teacher tensors with a gradient: '
                f'{r["teacher_params_with_grad"]}'
            )
    return lines


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point; returns the table rows."""
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    )
    if args.amp == 'fp16' and device.type != 'cuda':
        raise SystemExit('--amp fp16 needs CUDA; use --amp bf16 on CPU')
    rows = [r for key in args.models for r in run_model(args, key, device)]
    bad = [r for r in rows if not all(math.isfinite(r[k]) for k in ('step_ms', 'teacher_ms'))]
    if bad:
        raise SystemExit(f'non-finite timings: {bad}')
    what = (
        f'{device.type}, batch {args.batch_size}, {args.img_size} px, depth {args.depth}, '
        f'{"fp32" if args.amp == "none" else args.amp + " autocast"}, '
        f'{args.num_boxes} objects/image, {args.rois or "config"} RoIs/image, '
        f'{os.cpu_count()} CPUs, '
        f'{torch.get_num_threads()} threads'
    )
    if device.type == 'cuda':
        what += f', {torch.cuda.get_device_name(device)}'
    sys.stdout.write('\n'.join(format_table(rows, what)) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(setting=what, rows=rows), f, indent=2)
    return rows


if __name__ == '__main__':
    main()
