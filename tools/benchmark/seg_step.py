"""Benchmark a CWD specific-distillation step of UperNet vs the student alone; slide inference.

Segmentation SD in G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771; official code G2SD_seg_dis) adds a frozen MAE-B
UperNet teacher to every student step: backbone + Feature2Pyramid neck + UPerHead only (no
auxiliary head, no losses), in eval mode, without gradients, in the same autocast
(``g2sd.seg.decode_teacher_forward``), and channel-wise distillation (CWD, tau 1, weight 3) of
the decode head's class logits. This tool builds ``model`` of
``configs/seg/upernet_g2sd_{ti,s}.py`` (random weights, ``allow_random_teacher``) and times
``train_step`` (preprocessing with the crop pad, teacher, student forward + backward with the
auxiliary FCN head, AdamW with layer decay 0.65 as the config's constructor builds it) with
CWD on and the identical step with ``distillation_stopped=True`` (the student UperNet alone,
i.e. the "w/o S.D." fine-tuning). It prints, per student: images/s, the teacher's own time and
its share of the SD step (the teacher forward is timed on its own, around ``run_teacher``),
peak memory, and whether every trainable parameter received a gradient. Times are medians
over the ``--iters`` timed steps (each synchronised; robust to bursts of other work on a
shared CPU); the JSON also has every step's time.

Then slide inference (``predict`` after the data preprocessor, ``test_cfg.mode='slide'``: crop
= ``--img-size``, stride 2/3 of it, as the paper's 512 / 341, on square images twice the crop,
i.e. 3 x 3 crops each) of the students vs the MAE-B teacher (the SD config's teacher).

Inputs are synthetic: random uint8 images and label maps of random rectangles of the config's
classes on class 0 (mmseg ``SegDataSample`` with ``gt_sem_seg``).

Norm layers: the paper configs use SyncBN (8 GPUs). This single-process tool converts every
SyncBN of student and teacher to BatchNorm with mmengine's ``revert_sync_batchnorm`` (what
``g2sd``'s runner does without CUDA) and says so in its output; BN and SyncBN cost the same
in one process.

Memory: ``peak MiB`` is the peak during the timed mode (CUDA: ``max_memory_allocated``; CPU:
the process's peak RSS, ``VmHWM``); ``step MiB`` is that peak minus what was resident before
the mode started (all weights, teacher included), i.e. activations + gradients + AdamW state
(a fresh optimizer per mode). CPU RSS figures are approximate (the allocator may keep freed
pages). The measuring helpers are those of ``det_step.py`` / ``throughput.py``. On a CPU
shared with other jobs, ``--threads 1`` avoids OpenMP stalls (a descheduled worker thread
made steps 10-40x slower in our 2-core runs).

Example::

    python tools/benchmark/seg_step.py --model ti,s --batch-size 8 --amp fp16   # GPU, 512 px
    python tools/benchmark/seg_step.py --img-size 128 --iters 3 --json seg.json # CPU
    python tools/benchmark/seg_step.py --img-size 128 --threads 1               # shared CPU
    python tools/benchmark/seg_step.py --model ti --img-size 64 --depth 4 --iters 1
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# torch / mmengine / mmseg / g2sd are imported in the functions so that --help answers at once.

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
SD_CONFIG = 'configs/seg/upernet_g2sd_{model}.py'
NAMES = {'ti': 'ViT-Ti', 's': 'ViT-S', 'b': 'ViT-B'}
MODES = (('SD (student + MAE-B teacher)', False), ('no SD (student only)', True))
#: Backbone types whose size arguments are ``img_size`` (int) / ``depth`` (the g2sd ViT);
#: mmseg's own ``MAE`` / ``BEiT`` use ``img_size`` (pair) / ``num_layers``.
MMSEG_VITS = ('MAE', 'BEiT', 'mmseg.MAE', 'mmseg.BEiT')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Images/s, teacher share and peak memory of a G2SD CWD training step '
        '(UperNet, ViT-Ti/S student, MAE-B UperNet teacher) vs the student alone, and '
        'slide-inference images/s of the students vs the teacher.'
    )
    parser.add_argument('--model', default='ti,s', help='comma list of ti, s (default ti,s)')
    parser.add_argument(
        '--config',
        default=SD_CONFIG,
        help=f'SD config whose model is benchmarked; {{model}} is replaced (default {SD_CONFIG})',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default={},
        help='override settings of the loaded SD config, key=value (e.g. '
        'model.student.decode_head.num_classes=11), before the size options apply',
    )
    parser.add_argument(
        '--batch-size', type=int, default=2, help='images per training step (>= 2; paper: 2/GPU)'
    )
    parser.add_argument(
        '--img-size',
        type=int,
        default=512,
        help='square training crop and slide crop, a multiple of 32 (paper: 512)',
    )
    parser.add_argument(
        '--depth',
        type=int,
        default=12,
        help='ViT blocks of student and teacher (12; >= 4 for quick checks: the outputs of '
        'blocks (3, 5, 7, 11) are scaled to the depth, e.g. (0, 1, 2, 3) for 4)',
    )
    parser.add_argument('--iters', type=int, default=5, help='timed training steps per mode')
    parser.add_argument(
        '--warmup',
        type=int,
        default=2,
        help='untimed steps per mode (slide inference: at most 1 untimed batch per model)',
    )
    parser.add_argument(
        '--slide-iters', type=int, default=3, help='timed slide-inference batches per model'
    )
    parser.add_argument(
        '--slide-batch-size', type=int, default=1, help='images per slide-inference batch'
    )
    parser.add_argument('--no-slide', action='store_true', help='skip the slide-inference table')
    parser.add_argument('--no-train', action='store_true', help='skip the training-step table')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument(
        '--amp',
        nargs='?',
        const='auto',
        choices=('none', 'auto', 'fp16', 'bf16'),
        default='none',
        help='autocast dtype (plain --amp: fp16 on CUDA, bf16 on CPU; fp16: CUDA only, '
        'dynamic loss scale; bf16: CUDA or CPU; slide inference autocasts as throughput.py does: '
        'fp16 on CUDA, bf16 on CPU)',
    )
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    keys = [k.strip().lower() for k in args.model.split(',') if k.strip()]
    bad = [k for k in keys if k not in ('ti', 's')]
    if bad or not keys:
        parser.error(f"--model must be a comma list of ['s', 'ti'], got {args.model!r}")
    args.models = list(dict.fromkeys(keys))
    if args.img_size < 64 or args.img_size % 32:
        parser.error(f'--img-size must be a multiple of 32 and >= 64, got {args.img_size}')
    if args.depth < 4:
        parser.error(f'--depth must be >= 4 (four UperNet inputs), got {args.depth}')
    if args.batch_size < 2:
        parser.error(
            f'--batch-size must be >= 2 (the BatchNorm after the 1x1 pooling branch of UPerHead '
            f'needs two values per channel in training), got {args.batch_size}'
        )
    for name in ('iters', 'slide_iters', 'slide_batch_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.no_slide and args.no_train:
        parser.error('--no-slide with --no-train leaves nothing to measure')
    return args


# ------------------------------------------------------------------ models and data
def scaled_out_indices(out_indices: Sequence[int], depth: int, orig_depth: int) -> tuple:
    """The blocks ``out_indices`` of a ``orig_depth``-block ViT mapped to ``depth`` blocks.

    Block ``i`` (0-based) becomes ``round((i + 1) * depth / orig_depth) - 1``: the paper's
    (3, 5, 7, 11) of 12 are kept at 12 and become (0, 1, 2, 3) at 4, (1, 2, 3, 5) at 6.

    Raises:
        ValueError: Two outputs fall on the same block at this depth.
    """
    if depth == orig_depth:
        return tuple(out_indices)
    new = tuple(round((i + 1) * depth / orig_depth) - 1 for i in out_indices)
    if len(set(new)) != len(new) or min(new) < 0:
        raise ValueError(
            f'--depth {depth}: out_indices {tuple(out_indices)} of {orig_depth} blocks map to '
            f'{new}, not distinct; use another depth'
        )
    return new


def resize_segmentor(seg: dict, img_size: int, depth: int) -> Any:
    """A copy of an mmseg ``EncoderDecoder`` config at another crop size / depth.

    Args:
        seg: Segmentor config (``g2sd.SegViTBackbone`` or mmseg ``MAE`` / ``BEiT`` backbone,
            ``SegDataPreProcessor``, slide ``test_cfg``).
        img_size: Square crop: the ViT's ``img_size``, the preprocessor's training pad and
            the slide crop (stride ``2 * img_size // 3``, the paper's 341 for 512).
        depth: ViT blocks; ``out_indices`` scaled by :func:`scaled_out_indices`.

    Returns:
        The changed copy (no pretrained backbone file) as a ``ConfigDict`` (mmseg reads
        ``test_cfg.mode`` as an attribute).
    """
    from mmengine.config import ConfigDict

    seg = ConfigDict(copy.deepcopy(dict(seg)))
    bb = seg['backbone']
    if bb.get('type') in MMSEG_VITS:
        orig = bb.get('num_layers', 12)
        bb.update(img_size=(img_size, img_size), num_layers=depth, pretrained=None, init_cfg=None)
    else:
        orig = bb.get('depth', 12)
        bb.update(img_size=img_size, depth=depth, pretrained=None)
    bb['out_indices'] = scaled_out_indices(bb.get('out_indices', (3, 5, 7, 11)), depth, orig)
    pre = seg.get('data_preprocessor')
    if pre is not None and pre.get('size') is not None:
        pre['size'] = (img_size, img_size)
    seg['test_cfg'] = ConfigDict(
        mode='slide', crop_size=(img_size, img_size), stride=slide_stride(img_size)
    )
    return seg


def slide_stride(crop: int) -> tuple[int, int]:
    """The slide stride of a square ``crop``: 2/3 of it (the paper's 341 for 512)."""
    return (2 * crop // 3, 2 * crop // 3)


def slide_crops(size: int, crop: int, stride: int) -> int:
    """Crops per square image of ``size`` in mmseg's ``slide_inference`` grid."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return grids * grids


def backbone_channels(seg: dict) -> int:
    """Input channels of a segmentor config's backbone (3 unless set)."""
    bb = seg['backbone']
    return int(bb.get('in_chans', bb.get('in_channels', 3)))


def synthetic_batch(
    batch: int, img_size: int, num_classes: int, in_chans: int, seed: int
) -> dict[str, Any]:
    """``dict(inputs, data_samples)`` as mmseg's ``PackSegInputs`` gives it.

    Each image: uint8 (in_chans, H, W) noise; its label map (1, H, W) is class 0 with 6
    random rectangles of 1/8 to 1/2 of the side, labels in ``[1, num_classes)``.
    """
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(batch):
        inputs.append(
            torch.randint(0, 256, (in_chans, img_size, img_size), dtype=torch.uint8, generator=g)
        )
        label = torch.zeros(1, img_size, img_size, dtype=torch.long)
        for _ in range(6):
            h, w = torch.randint(img_size // 8, img_size // 2, (2,), generator=g).tolist()
            y, x = torch.randint(0, img_size - max(h, w), (2,), generator=g).tolist()
            label[:, y : y + h, x : x + w] = int(
                torch.randint(1, max(num_classes, 2), (1,), generator=g)
            )
        sample = SegDataSample(
            metainfo=dict(
                img_path=f'synthetic_{i}.png',
                seg_map_path=f'synthetic_{i}.png',
                ori_shape=(img_size, img_size),
                img_shape=(img_size, img_size),
                pad_shape=(img_size, img_size),
                scale_factor=(1.0, 1.0),
                flip=False,
                flip_direction=None,
                reduce_zero_label=False,
            )
        )
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def revert_sync_bn(module: Any) -> int:
    """Replace every SyncBN of ``module`` in place by BatchNorm; returns how many there were.

    mmengine's ``revert_sync_batchnorm`` (the helper ``g2sd``'s runner uses without CUDA);
    parameters, buffers and the train / eval flag are kept.
    """
    from mmengine.model import revert_sync_batchnorm
    from torch import nn

    count = sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    if isinstance(module, nn.SyncBatchNorm):
        raise TypeError(f'cannot revert a bare {type(module).__name__} in place')
    revert_sync_batchnorm(module)
    return count


def load_config(args: argparse.Namespace, key: str) -> Any:
    """The SD config of ``key`` with ``--cfg-options`` merged."""
    from mmengine.config import Config

    path = Path(args.config.format(model=key))
    path = path if path.is_absolute() else ROOT / path
    if not path.exists():
        raise SystemExit(f'config not found: {path} (--config names the SD config)')
    cfg = Config.fromfile(str(path))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = cfg.model
    if model.get('type') not in ('g2sd.DistillModel', 'DistillModel'):
        raise ValueError(f'{path}: model.type must be g2sd.DistillModel, got {model.get("type")!r}')
    return cfg


def build_sd_model(args: argparse.Namespace, key: str) -> tuple[Any, dict, int, int]:
    """``model`` of the SD config for ``key`` at the benchmark's size, random weights.

    Returns:
        The ``g2sd.DistillModel``, the config's ``optim_wrapper`` dict, the number of
        SyncBN layers (student + teacher) reverted to BN and the input channels.
    """
    import g2sd.seg  # noqa: F401  (registers backbone, dataset, teacher forward, losses)
    from g2sd.distill import DistillModel

    cfg = load_config(args, key)
    model = cfg.model.to_dict()
    model.pop('type')
    model.update(
        student=resize_segmentor(model['student'], args.img_size, args.depth),
        teacher=resize_segmentor(model['teacher'], args.img_size, args.depth),
        teacher_checkpoint=None,
        allow_random_teacher=True,
    )
    sd = DistillModel(**model)
    reverted = revert_sync_bn(sd) + revert_sync_bn(sd.teacher)
    return sd, cfg.optim_wrapper.to_dict(), reverted, backbone_channels(model['student'])


def amp_dtype(amp: str, device: Any) -> str:
    """``none`` / ``fp16`` / ``bf16`` for ``--amp`` (``auto``: fp16 on CUDA, else bf16)."""
    if amp == 'auto':
        return 'fp16' if device.type == 'cuda' else 'bf16'
    return amp


# ------------------------------------------------------------------------ measuring
def run_model(args: argparse.Namespace, key: str, device: Any) -> tuple[list[dict], int]:
    """The SD and the no-SD row of one student, and the SyncBN layers reverted."""
    import torch
    from det_step import (
        build_optim_wrapper,
        memory_mark,
        memory_peak,
        record_missing_grads,
        sync,
        timed,
    )

    torch.manual_seed(0)
    model, optim_cfg, reverted, in_chans = build_sd_model(args, key)
    model = model.to(device)
    model.train()
    student = model.student
    num_classes = int(student.decode_head.num_classes)
    data = synthetic_batch(args.batch_size, args.img_size, num_classes, in_chans, seed=0)
    teacher_mib = sum(p.numel() * p.element_size() for p in model.teacher.parameters()) / 2**20
    spent: list[float] = []
    model.run_teacher = timed(model.run_teacher, device, spent)
    student_params = {f'student.{n}': p for n, p in student.named_parameters()}
    amp = amp_dtype(args.amp, device)
    rows = []
    for mode, stopped in MODES:
        model.distillation_stopped = stopped
        ow = build_optim_wrapper(model, optim_cfg, amp, device)
        # SD: every trainable tensor of the wrapper (student + any CWD align conv); no SD:
        # the student's own.
        params = dict(model.named_parameters()) if not stopped else student_params
        missing: set[str] = set()
        record_missing_grads(ow, params, missing)
        base = memory_mark(device)
        for _ in range(args.warmup):
            model.train_step(data, ow)
        sync(device)
        spent.clear()
        steps = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model.train_step(data, ow)
            sync(device)
            steps.append(time.perf_counter() - t0)
        peak = memory_peak(device)
        # medians: robust to bursts of other work on a shared machine
        sec = statistics.median(steps)
        teacher_sec = statistics.median(spent) if spent else 0.0
        teacher_grads = sum(p.grad is not None for p in model.teacher.parameters())
        rows.append(
            dict(
                model=key,
                mode=mode,
                distill=not stopped,
                step_ms=sec * 1e3,
                step_ms_all=[t * 1e3 for t in steps],
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
    return rows, reverted


def build_segmentor(cfg: dict, what: str, device: Any) -> tuple[Any, int]:
    """An mmseg segmentor from ``cfg`` (random weights, SyncBN reverted, eval mode)."""
    from g2sd.distill.base import build_model

    model = build_model(cfg, what)
    reverted = revert_sync_bn(model)
    return model.to(device).eval(), reverted


def run_slide(args: argparse.Namespace, device: Any) -> tuple[list[dict], int]:
    """Slide-inference images/s of the students of ``args.models`` and the teacher."""
    import torch
    from throughput import measure

    specs: list[tuple[str, dict]] = []
    for key in args.models:
        cfg = load_config(args, key)
        specs.append((key, cfg.model.student.to_dict()))
        teacher = cfg.model.teacher.to_dict()
    specs.append(('b', teacher))
    size = 2 * args.img_size
    amp = amp_dtype(args.amp, device) != 'none'
    rows, reverted = [], 0
    for key, seg in specs:
        torch.manual_seed(0)
        seg = resize_segmentor(seg, args.img_size, args.depth)
        model, n = build_segmentor(seg, f'{key} segmentor', device)
        reverted += n
        data = synthetic_batch(
            args.slide_batch_size,
            size,
            int(model.decode_head.num_classes),
            backbone_channels(seg),
            seed=1,
        )
        batch = model.data_preprocessor(data, False)
        x, samples = batch['inputs'], batch['data_samples']
        ips = measure(
            model,
            x,
            args.slide_iters,
            min(args.warmup, 1),
            amp,
            call=lambda m=model, x=x, s=samples: m(x, s, mode='predict'),
        )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append(
            dict(
                model=key,
                name=f'{NAMES[key]} UperNet' + (' (MAE-B teacher)' if key == 'b' else ''),
                params_m=params,
                image=size,
                crop=args.img_size,
                stride=slide_stride(args.img_size)[0],
                crops_per_image=slide_crops(size, args.img_size, slide_stride(args.img_size)[0]),
                batch=args.slide_batch_size,
                img_per_s=ips,
            )
        )
        del model
        gc.collect()
    base = rows[-1]['img_per_s']
    for r in rows:
        r['speedup'] = r['img_per_s'] / base
    return rows, reverted


# ---------------------------------------------------------------------------- output
def format_tables(
    rows: list[dict[str, Any]],
    slide: list[dict[str, Any]],
    what: str,
    norm: str,
    batch: int,
    img_size: int,
) -> list[str]:
    """Markdown tables of the training step and slide inference, with the summaries."""
    lines = []
    if rows:
        lines += [
            f'### CWD SD training step, UperNet (batch {batch}, {img_size} px crops, {what})',
            '',
            '| student | mode | step ms | img/s | teacher ms | teacher % | peak MiB | step MiB |',
            '|---|---|---:|---:|---:|---:|---:|---:|',
        ]
    for r in rows:
        share = f'{r["teacher_share"]:.1%}' if r['distill'] else '-'
        t_ms = f'{r["teacher_ms"]:.1f}' if r['distill'] else '-'
        lines.append(
            f'| {NAMES[r["model"]]} | {r["mode"]} | {r["step_ms"]:.1f} | {r["img_per_s"]:.2f} '
            f'| {t_ms} | {share} | {r["peak_mib"]:.0f} | {r["step_mib"]:.0f} |'
        )
    if rows:
        lines.append('')
    for key in dict.fromkeys(r['model'] for r in rows):
        sd, nosd = (r for r in rows if r['model'] == key)
        lines.append(
            f'- {NAMES[key]}: teacher {sd["teacher_share"]:.1%} of the SD step; SD step = '
            f'{sd["step_ms"] / nosd["step_ms"]:.2f}x the student-only step; teacher weights '
            f'{sd["teacher_weights_mib"]:.0f} MiB'
        )
        for r in (sd, nosd):
            who = 'trainable' if r['distill'] else 'student'
            if r['params_without_grad']:
                got = 'NO, without gradient: ' + ', '.join(r['params_without_grad'][:10])
            else:
                got = 'yes'
            lines.append(
                f'  - {r["mode"]}: every {who} parameter got a gradient '
                f'({r["params_checked"]} tensors): {got}; teacher tensors with a gradient: '
                f'{r["teacher_params_with_grad"]}'
            )
    if slide:
        s0 = slide[0]
        lines += [
            *([''] if lines else []),
            f'### Slide inference, UperNet ({s0["image"]}x{s0["image"]} images, crop '
            f'{s0["crop"]}, stride {s0["stride"]}: {s0["crops_per_image"]} crops/image, batch '
            f'{s0["batch"]}, {what})',
            '',
            '| model | params (M) | img/s | vs ViT-B |',
            '|---|---:|---:|---:|',
        ]
        for r in slide:
            lines.append(
                f'| {r["name"]} | {r["params_m"]:.2f} | {r["img_per_s"]:.3f} '
                f'| {r["speedup"]:.2f}x |'
            )
    lines += ['', f'Norm layers: {norm}']
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; returns what ``--json`` writes."""
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    )
    amp = amp_dtype(args.amp, device)
    if amp == 'fp16' and device.type != 'cuda':
        raise SystemExit('--amp fp16 needs CUDA; use --amp bf16 on CPU')
    rows, reverted = [], 0
    for key in [] if args.no_train else args.models:
        got, n = run_model(args, key, device)
        rows += got
        reverted += n
    bad = [r for r in rows if not all(math.isfinite(r[k]) for k in ('step_ms', 'teacher_ms'))]
    if bad:
        raise SystemExit(f'non-finite timings: {bad}')
    slide: list[dict[str, Any]] = []
    if not args.no_slide:
        slide, n = run_slide(args, device)
        reverted += n
    what = (
        f'{device.type}, depth {args.depth}, {"fp32" if amp == "none" else amp + " autocast"}, '
        f'{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}'
    )
    if device.type == 'cuda':
        what += f', {torch.cuda.get_device_name(device)}'
    norm = (
        f'{reverted} SyncBN layers (paper configs) converted to BatchNorm for this single '
        "process (mmengine revert_sync_batchnorm, as g2sd's runner does without CUDA)"
        if reverted
        else 'no SyncBN in the configs (BatchNorm as configured)'
    )
    table = format_tables(rows, slide, what, norm, args.batch_size, args.img_size)
    sys.stdout.write('\n'.join(table) + '\n')
    out = dict(setting=what, norm=norm, syncbn_reverted=reverted, rows=rows, slide=slide)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == '__main__':
    main()
