"""Inference throughput of the G2SD students vs the ViT-B teacher (images/s).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) reports that the ViT-Ti / ViT-S students run 5.84x / 2.62x faster than the
ViT-B teacher at 224 px. ``--task cls`` (default) measures eval-mode forward passes
(students with the distillation token and both heads, the teacher with global pooling +
fc_norm, i.e. exactly the deployed models) under ``torch.inference_mode`` and prints images/s
and the speed-up over ViT-B next to the paper's ratios.

``--task det`` measures ViTDet Mask R-CNN inference (``mmdet`` ``predict`` after the data
preprocessor: backbone, SimpleFPN, RPN proposals, box head, NMS and mask head with the masks
pasted at the input size) of the ViT-Ti / ViT-S students vs the ViTDet-B teacher, built from
``configs/_base_/models/vitdet_mask_rcnn.py`` with random weights. A random box head scores
every class near 1/81, under the config's 0.05 threshold, so the mask head would never run;
the benchmark sets ``score_thr=0`` so that each image gets the full ``max_per_img`` (100)
detections and masks, as a trained detector on COCO does. The paper gives no detection
speed-ups, so that column is empty.

Example::

    python tools/benchmark/throughput.py --batch-size 256 --amp          # GPU
    python tools/benchmark/throughput.py --batch-size 16 --iters 5       # CPU
    python tools/benchmark/throughput.py --task det --batch-size 4 --amp # GPU, 1024 px
    python tools/benchmark/throughput.py --task det --img-size 256 --batch-size 1 --iters 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# torch / g2sd are imported in main() so that --help answers at once.

ARCHS = {
    'ti': dict(embed_dim=192, num_heads=3, student=True),
    's': dict(embed_dim=384, num_heads=6, student=True),
    'b': dict(embed_dim=768, num_heads=12, student=False),
}
NAMES = {'ti': 'G2SD-Ti (ViT-Ti + dist)', 's': 'G2SD-S (ViT-S + dist)', 'b': 'MAE ViT-B teacher'}
PAPER_SPEEDUP = {'ti': 5.84, 's': 2.62, 'b': 1.0}
DET_NAMES = {
    'ti': 'ViTDet-Ti (G2SD student)',
    's': 'ViTDet-S (G2SD student)',
    'b': 'ViTDet-B teacher',
}
DET_MODEL_CFG = Path(__file__).resolve().parents[2] / 'configs/_base_/models/vitdet_mask_rcnn.py'
#: Defaults per task: (batch size, image size).
TASK_DEFAULTS = {'cls': (64, 224), 'det': (2, 1024)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description='Inference images/s of the G2SD ViT-Ti / ViT-S students vs the ViT-B '
        'teacher (paper: 5.84x and 2.62x): classifiers (--task cls) or ViTDet Mask R-CNN '
        'detectors (--task det).'
    )
    parser.add_argument(
        '--task',
        choices=sorted(TASK_DEFAULTS),
        default='cls',
        help='cls: ViT classifiers; det: ViTDet Mask R-CNN (backbone + FPN + RPN + RoI heads)',
    )
    parser.add_argument('--models', default='ti,s,b', help='comma list of ti, s, b')
    parser.add_argument('--batch-size', type=int, default=None, help='cls: 64, det: 2')
    parser.add_argument(
        '--img-size', type=int, default=None, help='cls: 224, det: 1024 (a multiple of 32)'
    )
    parser.add_argument('--depth', type=int, default=12, help='blocks (12; fewer for smoke tests)')
    parser.add_argument(
        '--proposals',
        type=int,
        default=None,
        help='det: RPN proposals per image fed to the box head (default: the config, 1000); '
        'fewer for quick CPU checks',
    )
    parser.add_argument('--iters', type=int, default=10, help='timed batches per model')
    parser.add_argument('--warmup', type=int, default=3, help='untimed batches per model')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    parser.add_argument('--amp', action='store_true', help='autocast (fp16 on CUDA, bf16 on CPU)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    batch, size = TASK_DEFAULTS[args.task]
    args.batch_size = batch if args.batch_size is None else args.batch_size
    args.img_size = size if args.img_size is None else args.img_size
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.proposals is not None and (args.task != 'det' or args.proposals < 1):
        parser.error(f'--proposals needs --task det and a value >= 1, got {args.proposals}')
    if args.task == 'det' and (args.img_size < 64 or args.img_size % 32):
        parser.error(f'--task det needs --img-size a multiple of 32 and >= 64, got {args.img_size}')
    return args


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


def build_detector(key: str, img_size: int, depth: int, proposals: int | None = None) -> Any:
    """The ViTDet Mask R-CNN of ``key`` (random weights, eval mode, ``score_thr=0``).

    Args:
        key: ``'ti'``, ``'s'`` or ``'b'`` (``vitdet_{key}_detector`` of the base model config).
        img_size: Square input size.
        depth: ViT blocks.
        proposals: RPN proposals per image (``test_cfg.rpn.max_per_img``); None: the config.
    """
    from mmengine.config import Config

    import g2sd.det  # noqa: F401  (registers the backbone and the neck)
    from g2sd.distill.base import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from det_step import resize_detector

    cfg = Config.fromfile(str(DET_MODEL_CFG))
    det = resize_detector(cfg[f'vitdet_{key}_detector'].to_dict(), img_size, depth)
    det['test_cfg']['rcnn']['score_thr'] = 0.0
    if proposals is not None:
        det['test_cfg']['rpn']['max_per_img'] = proposals
    return build_model(det, f'{key} detector').eval()


def measure(
    model: Any, x: Any, iters: int, warmup: int, amp: bool, call: Callable[..., Any] | None = None
) -> float:
    """Images per second of ``model(x)`` (eval, inference mode).

    Args:
        model: The model (``model(x)`` unless ``call`` is given).
        x: The input batch (B, 3, H, W).
        iters: Timed calls.
        warmup: Untimed calls first.
        amp: Autocast (fp16 on CUDA, bf16 on CPU).
        call: Run ``call()`` instead of ``model(x)`` (detectors: predict with data samples).
    """
    import torch

    device = x.device
    run = call if call is not None else (lambda: model(x))
    ctx = (
        torch.autocast(
            device.type, dtype=torch.float16 if device.type == 'cuda' else torch.bfloat16
        )
        if amp
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        for _ in range(warmup):
            run()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            run()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return x.shape[0] * iters / elapsed


def measure_detector(model: Any, args: argparse.Namespace) -> float:
    """Images per second of ``predict`` on a preprocessed synthetic batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from det_step import synthetic_batch

    data = synthetic_batch(args.batch_size, args.img_size, 1, 80, seed=0)
    batch = model.data_preprocessor(data, False)
    x, samples = batch['inputs'], batch['data_samples']
    return measure(
        model,
        x,
        args.iters,
        args.warmup,
        args.amp,
        call=lambda: model(x, samples, mode='predict'),
    )


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
    det = args.task == 'det'
    x = (
        None
        if det
        else torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    )
    rows = []
    for key in keys:
        if det:
            model = build_detector(key, args.img_size, args.depth, args.proposals).to(device)
            ips = measure_detector(model, args)
        else:
            model = build(key, args.img_size, args.depth).to(device)
            ips = measure(model, x, args.iters, args.warmup, args.amp)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        name = (DET_NAMES if det else NAMES)[key]
        rows.append(dict(model=name, key=key, params_m=params, img_per_s=ips))
        del model
    base = next((r['img_per_s'] for r in rows if r['key'] == 'b'), None)
    what = f'{device.type}, batch {args.batch_size}, {args.img_size} px, depth {args.depth}'
    what += ', AMP' if args.amp else ', fp32'
    if det:
        what += f', {args.proposals or "config"} proposals/image'
    title = 'Mask R-CNN inference throughput' if det else 'inference throughput'
    width = 28 if det else 26
    lines = [
        f'{title} ({what})',
        f'{"model":<{width}}{"params (M)":>11}{"img/s":>10}{"vs ViT-B":>10}{"paper":>8}',
    ]
    for r in rows:
        r['speedup'] = r['img_per_s'] / base if base else None
        sp = f'{r["speedup"]:.2f}x' if base else '-'
        paper = '-' if det else f'{PAPER_SPEEDUP[r["key"]]:.2f}x'
        ips = f'{r["img_per_s"]:.2f}' if det else f'{r["img_per_s"]:.1f}'
        lines.append(f'{r["model"]:<{width}}{r["params_m"]:>11.2f}{ips:>10}{sp:>10}{paper:>8}')
    sys.stdout.write('\n'.join(lines) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(task=args.task, setting=what, rows=rows), f, indent=2)
    return rows


if __name__ == '__main__':
    main()
