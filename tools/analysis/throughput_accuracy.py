"""Inference throughput vs top-1 of ViT classifiers: students vs teacher (PNG + JSON).

G2SD (Huang et al., CVPR 2023, arXiv 2302.14771) reports its students' accuracy next to their
throughput (ViT-Ti / ViT-S run 5.84x / 2.62x faster than the ViT-B teacher). This tool puts
each given classifier on that plane: images/s of eval-mode forward passes (``--batch-size``
images, ``--warmup`` untimed then ``--iters`` timed batches under ``torch.inference_mode``,
the timing of ``tools/benchmark/throughput.py``; the fastest of ``--repeats`` timings) and top-1 on a class-balanced set of
Fashion-MNIST test images (or any folder of idx files in that layout).

A model is ``NAME=SPEC:CHECKPOINT``. SPEC is either a classification config (``*.py``, e.g.
``configs/cls/*.py``: the classifier, a ``g2sd.DistillModel``'s student, and the config's
test-pipeline normalisation, loaded as ``tools/analysis/occlusion.py`` does) or an ARCH of
``tools/demo.py`` (``fmnist-student``, ``fmnist-teacher``, a JSON object or .json file of ViT
keyword arguments; the demo's normalisation). With an ARCH the checkpoint's keys complete the
classifier (keys given in the ARCH win): ``num_classes`` from ``head.weight``, a distillation
token ViT when there is a ``dist_token``, ``global_pool='avg'`` when there is an ``fc_norm``
(else ``'token'``). Checkpoints are loaded strictly (mmengine checkpoints of fine-tuning or
distillation runs, ``SaveStudentHook`` exports, plain state dicts).

Writes ``<out-dir>/<name>.png`` (top-1 vs images/s, one labelled point per model) and
``<out-dir>/<name>.json``, and prints the table.

Examples::

    python tools/analysis/throughput_accuracy.py \\
        --model 'teacher=configs/cls/mae-ft_vit-teacher_fmnist.py:checkpoints/fmnist_vit-teacher_cls.pth' \\
        --model 'G2SD=configs/cls/g2sd-sd_vit-student_fmnist.py:work_dirs/demo/cls/g2sd/epoch_5.pth' \\
        --num-images 1000 --batch-size 256 --out-dir work_dirs/analysis/throughput_accuracy
    python tools/analysis/throughput_accuracy.py \\
        --model 'teacher=fmnist-teacher:checkpoints/fmnist_vit-teacher_cls.pth' --device cuda
"""  # noqa: E501

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tools'))
sys.path.insert(0, str(REPO / 'tools' / 'analysis'))
sys.path.insert(0, str(REPO / 'tools' / 'benchmark'))
from demo import ARCHS, NORM, load_fmnist, parse_arch  # noqa: E402
from occlusion import build_classifier  # noqa: E402
from throughput import measure  # noqa: E402

from g2sd.analysis.report import throughput_accuracy_figure  # noqa: E402

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'

logger = logging.getLogger('g2sd.analysis.throughput_accuracy_tool')


def parse_model(value: str) -> tuple[str, str, str]:
    """``NAME=SPEC:CHECKPOINT`` -> (name, spec, checkpoint); SPEC may contain ':' (JSON).

    Raises:
        ValueError: ``value`` is not of that form.
    """
    name, sep, rest = value.partition('=')
    spec, sep2, ckpt = rest.rpartition(':')
    if not sep or not sep2 or not name.strip() or not spec or not ckpt:
        raise ValueError(f'--model {value!r} must be NAME=SPEC:CHECKPOINT')
    return name.strip(), spec, ckpt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (errors exit with status 2 and the offending value)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--model',
        action='append',
        default=[],
        metavar='NAME=SPEC:CKPT',
        help='a classifier: legend name, SPEC (a configs/cls/*.py config or an arch: '
        f'{" | ".join(ARCHS)} | JSON) and checkpoint; repeatable',
    )
    parser.add_argument('--name', default='throughput_accuracy', help='output file stem')
    parser.add_argument(
        '--out-dir', default='work_dirs/analysis/throughput_accuracy', help='output folder'
    )
    parser.add_argument('--data-root', default=DEFAULT_ROOT, help='folder of the idx files')
    parser.add_argument(
        '--num-images', type=int, default=1000, help='class-balanced test images (default 1000)'
    )
    parser.add_argument(
        '--batch-size', type=int, default=256, help='images per timed (and eval) batch (256)'
    )
    parser.add_argument('--iters', type=int, default=10, help='timed batches per model (10)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed batches first (3)')
    parser.add_argument(
        '--repeats',
        type=int,
        default=3,
        help='timings per model, the fastest is kept (shared machines are noisy; default 3)',
    )
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu', help='default cpu')
    parser.add_argument('--amp', action='store_true', help='time under autocast (fp16 / bf16)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    args = parser.parse_args(argv)
    models = []
    for value in args.model:
        try:
            models.append(parse_model(value))
        except ValueError as e:
            parser.error(str(e))
    if not models:
        parser.error('give at least one classifier: --model NAME=SPEC:CKPT')
    names = [m[0] for m in models]
    if len(set(names)) != len(names):
        parser.error(f'model names must differ, got {names}')
    args.models = []
    for name, spec, ckpt in models:
        if not Path(ckpt).is_file():
            parser.error(f'--model {name}: checkpoint {ckpt!r} not found')
        if spec.endswith('.py'):
            if not Path(spec).is_file():
                parser.error(f'--model {name}: config {spec!r} not found')
            arch = None
        else:
            try:
                arch = parse_arch(spec)
            except ValueError as e:
                parser.error(f'--model {name}: {e}')
        args.models.append((name, spec, arch, ckpt))
    for what in ('num_images', 'batch_size', 'iters', 'repeats'):
        if getattr(args, what) < 1:
            parser.error(f'--{what.replace("_", "-")} must be >= 1, got {getattr(args, what)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    return args


def arch_classifier_config(arch: dict, state_dict: dict[str, torch.Tensor]) -> dict:
    """A ``g2sd.ViTClassifier`` config of ``arch`` completed from a checkpoint's keys.

    Args:
        arch: ViT keyword arguments (:func:`demo.parse_arch`); its keys win.
        state_dict: The classifier's weights, ``backbone.``-prefixed or not.

    Raises:
        ValueError: The checkpoint has no classification head.
    """
    keys = {k.removeprefix('backbone.') for k in state_dict}
    head = state_dict.get('head.weight', state_dict.get('backbone.head.weight'))
    if head is None:
        raise ValueError('the checkpoint has no head.weight: not a classifier (use a config)')
    distilled = 'dist_token' in keys
    backbone: dict[str, Any] = dict(
        type='g2sd.DistilledVisionTransformer' if distilled else 'g2sd.VisionTransformer',
        num_classes=int(head.shape[0]),
        global_pool='avg' if 'fc_norm.weight' in keys else 'token',
    )
    if distilled:
        backbone['dist_token_position'] = 'end'
    backbone.update(arch)
    return dict(type='g2sd.ViTClassifier', backbone=backbone)


def build_arch_classifier(arch: dict, checkpoint: str) -> torch.nn.Module:
    """The ViT classifier of ``arch`` with ``checkpoint`` loaded strictly (eval mode).

    Raises:
        ValueError: The checkpoint is no classifier.
        g2sd.checkpoint.CheckpointError: The checkpoint does not fit.
    """
    import g2sd.cls  # noqa: F401  (registers the cls types)
    from g2sd.checkpoint import load_file, load_pretrained
    from g2sd.distill import plain_student_state_dict
    from g2sd.registry import MODELS

    sd = plain_student_state_dict(load_file(checkpoint, trusted=True))
    model = MODELS.build(arch_classifier_config(arch, sd))
    if not any(k.startswith('backbone.') for k in sd):
        load_pretrained(model.backbone, sd, use='whole', source=checkpoint)
    else:
        load_pretrained(model, sd, use='whole', source=checkpoint)
    return model.eval()


@torch.inference_mode()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    """Fraction of ``images`` (N, C, H, W) whose arg-max logit is the label."""
    right = 0
    for i in range(0, len(images), batch):
        logits = model(images[i : i + batch], mode='tensor')
        right += int((logits.argmax(-1) == labels[i : i + batch]).sum())
    return right / len(images)


def format_table(result: dict) -> str:
    """Params, images/s and top-1 (%) per model."""
    w = max(len('model'), *(len(n) for n in result['models'])) + 2
    lines = [f'{"model":<{w}}{"params (M)":>11}{"img/s":>12}{"top-1 (%)":>11}']
    for name, m in result['models'].items():
        lines.append(
            f'{name:<{w}}{m["params_m"]:>11.3f}{m["throughput"]:>12.1f}{100 * m["accuracy"]:>11.2f}'
        )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure every model, write ``<name>.png`` and ``<name>.json``, print the table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.time()
    raw, labels = load_fmnist('test', args.num_images, root=args.data_root, normalize=False)
    setting = dict(
        device=device.type,
        batch_size=args.batch_size,
        iters=args.iters,
        warmup=args.warmup,
        repeats=args.repeats,
        amp=args.amp,
        threads=torch.get_num_threads(),
    )
    result: dict[str, Any] = dict(
        setting=setting, num_images=len(raw), data_root=args.data_root, models={}
    )
    for name, spec, arch, ckpt in args.models:
        if arch is None:
            model, mean, std = build_classifier(spec, ckpt)
        else:
            model = build_arch_classifier(arch, ckpt)
            mean, std = [NORM['mean']], [NORM['std']]
        model.to(device)
        c = model.backbone.patch_embed.proj.in_channels
        mean_t, std_t = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        images = ((raw.expand(-1, c, -1, -1) - mean_t) / std_t).to(device)
        acc = top1(model, images, labels.to(device), args.batch_size)
        reps = -(-args.batch_size // len(images))  # a full timed batch of real images
        x = images.repeat(reps, 1, 1, 1)[: args.batch_size]
        forward = functools.partial(model, x, mode='tensor')
        ips = max(
            measure(model, x, args.iters, args.warmup, args.amp, call=forward)
            for _ in range(args.repeats)
        )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        result['models'][name] = dict(
            spec=spec, checkpoint=ckpt, throughput=ips, accuracy=acc, params_m=params
        )
        logger.info('%s: %.1f images/s, top-1 %.2f%%', name, ips, 100 * acc)
        del model, forward
    result['seconds'] = round(time.time() - t0, 2)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.name}.json').write_text(json.dumps(result, indent=2))
    points = [
        dict(name=n, throughput=m['throughput'], accuracy=100 * m['accuracy'])
        for n, m in result['models'].items()
    ]
    what = f'{device.type}, batch {args.batch_size}' + (', AMP' if args.amp else '')
    throughput_accuracy_figure(points, out / f'{args.name}.png', xlabel=f'images / s ({what})')
    sys.stdout.write(format_table(result) + '\n')
    logger.info('wrote %s and %s', out / f'{args.name}.png', out / f'{args.name}.json')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
