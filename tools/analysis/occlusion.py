"""Top-1 of ViT classifiers as a growing fraction of patches is dropped or zeroed (PNG + JSON).

G2SD (Huang et al., CVPR 2023, arXiv 2302.14771) shows that its students keep more of their
accuracy than MAE + SD students when patches are occluded, with the random patch drop of
Naseer et al. ("Intriguing Properties of Vision Transformers", NeurIPS 2021). This tool builds
each classifier from its config (``g2sd.ViTClassifier``; a ``g2sd.DistillModel`` config gives
its student) and checkpoint (mmengine checkpoint of a fine-tuning or distillation run,
``SaveStudentHook`` export or plain backbone state dict, loaded strictly), normalises a
class-balanced set of Fashion-MNIST test images (or any folder of idx files in that layout)
with the config's test-pipeline ``Normalize`` (else the demo's constants) and measures top-1
at each occluded fraction in two modes: ``drop`` (the occluded patches' tokens are removed
before the blocks, class / distillation tokens kept) and ``zero`` (their pixels set to 0 in
the normalised input, the mean colour). One seeded noise decides the occluded patches:
``round(ratio * N)`` per image, the same for every model and both modes.

Writes ``<out-dir>/<name>.png`` (top-1 vs occluded fraction, one line per model, one panel
per mode) and ``<out-dir>/<name>.json``, and prints the table.

Examples::

    python tools/analysis/occlusion.py \\
        --model 'MAE + SD=configs/cls/mae-sd_vit-student_fmnist.py:work_dirs/demo/cls/mae_sd/epoch_5.pth' \\
        --model 'G2SD=configs/cls/g2sd-sd_vit-student_fmnist.py:work_dirs/demo/cls/g2sd/epoch_5.pth' \\
        --num-images 500 --out-dir work_dirs/analysis/occlusion
    python tools/analysis/occlusion.py --config configs/cls/mae-ft_vit-teacher_fmnist.py \\
        --checkpoint checkpoints/fmnist_vit-teacher_cls.pth
"""  # noqa: E501

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tools'))
from demo import NORM, load_fmnist  # noqa: E402

from g2sd.analysis.occlusion import (  # noqa: E402
    DEFAULT_RATIOS,
    MODES,
    ViTOcclusionClassifier,
    num_occluded,
    occlusion_curve,
)

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'

logger = logging.getLogger('g2sd.analysis.occlusion_tool')


def parse_model(value: str) -> tuple[str, str, str]:
    """``NAME=CONFIG.py:CHECKPOINT`` -> (name, config, checkpoint).

    Raises:
        ValueError: ``value`` is not of that form.
    """
    name, sep, rest = value.partition('=')
    config, sep2, ckpt = rest.partition('.py:')
    if not sep or not sep2 or not name.strip() or not ckpt:
        raise ValueError(f'--model {value!r} must be NAME=CONFIG.py:CHECKPOINT')
    return name.strip(), config + '.py', ckpt


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
        metavar='NAME=CONFIG:CKPT',
        help='a classifier: legend name, config (configs/cls/*.py) and checkpoint; repeatable',
    )
    parser.add_argument('--config', help='config of one classifier (with --checkpoint)')
    parser.add_argument('--checkpoint', help='checkpoint of --config')
    parser.add_argument(
        '--name', default='occlusion', help='output file stem (<out-dir>/<name>.png/.json)'
    )
    parser.add_argument('--out-dir', default='work_dirs/analysis/occlusion', help='output folder')
    parser.add_argument('--data-root', default=DEFAULT_ROOT, help='folder of the idx files')
    parser.add_argument(
        '--num-images', type=int, default=1000, help='class-balanced test images (default 1000)'
    )
    parser.add_argument(
        '--ratios',
        type=float,
        nargs='+',
        default=list(DEFAULT_RATIOS),
        help='occluded fractions in [0, 1) (default 0 0.1 ... 0.9)',
    )
    parser.add_argument(
        '--modes', nargs='+', choices=MODES, default=list(MODES), help='default: drop zero'
    )
    parser.add_argument('--seed', type=int, default=0, help='seed of the occluded patches')
    parser.add_argument('--batch-size', type=int, default=250, help='images per forward pass')
    parser.add_argument('--device', default='cpu', help="torch device (default 'cpu')")
    args = parser.parse_args(argv)
    models = []
    for value in args.model:
        try:
            models.append(parse_model(value))
        except ValueError as e:
            parser.error(str(e))
    if (args.config is None) != (args.checkpoint is None):
        parser.error('--config and --checkpoint go together')
    if args.config:
        models.insert(0, (Path(args.config).stem, args.config, args.checkpoint))
    if not models:
        parser.error(
            'give at least one classifier: --model NAME=CONFIG:CKPT or --config/--checkpoint'
        )
    names = [m[0] for m in models]
    if len(set(names)) != len(names):
        parser.error(f'model names must differ, got {names}')
    for _, config, ckpt in models:
        for what, path in (('config', config), ('checkpoint', ckpt)):
            if not Path(path).is_file():
                parser.error(f'{what} {path!r} not found')
    if args.num_images < 1:
        parser.error(f'--num-images must be >= 1, got {args.num_images}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    for r in args.ratios:
        if not 0.0 <= r < 1.0:
            parser.error(f'--ratios must be in [0, 1), got {r}')
    args.models = models
    return args


def classifier_config(cfg: Any) -> dict:
    """The classifier part of a config's ``model`` (the student of a distillation wrapper)."""
    model = copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else cfg.model)
    if 'student' in model and 'teacher' in model:
        model = model['student']
    if model.get('type') not in ('g2sd.ViTClassifier', 'ViTClassifier'):
        raise ValueError(f'model type {model.get("type")!r} is not g2sd.ViTClassifier')
    model['pretrained'] = None  # weights come from the checkpoint
    return model


def config_norm(cfg: Any) -> tuple[list[float], list[float]]:
    """(mean, std) of the ``Normalize`` of the config's test pipeline, else the demo's."""
    try:
        pipeline = cfg.test_dataloader.dataset.pipeline
    except AttributeError:
        pipeline = []
    for t in pipeline or []:
        if t.get('type') == 'Normalize':
            return [float(v) for v in t['mean']], [float(v) for v in t['std']]
    return [NORM['mean']], [NORM['std']]


def build_classifier(config: str, checkpoint: str) -> tuple[torch.nn.Module, tuple, tuple]:
    """ViTClassifier of ``config`` with ``checkpoint`` loaded strictly; and its (mean, std).

    Raises:
        ValueError: The config's model is not a ViT classifier.
        g2sd.checkpoint.CheckpointError: The checkpoint does not fit.
    """
    from mmengine.config import Config

    import g2sd.cls  # noqa: F401  (registers the cls types)
    from g2sd.checkpoint import load_file, load_pretrained
    from g2sd.distill import plain_student_state_dict
    from g2sd.registry import MODELS

    cfg = Config.fromfile(config)
    model = MODELS.build(classifier_config(cfg))
    sd = plain_student_state_dict(load_file(checkpoint, trusted=True))
    if not any(k.startswith('backbone.') for k in sd):  # an export: backbone keys only
        load_pretrained(model.backbone, sd, use='whole', source=checkpoint)
    else:
        load_pretrained(model, sd, use='whole', source=checkpoint)
    return model.eval(), *config_norm(cfg)


def plot(result: dict, path: Path) -> None:
    """One panel per mode: top-1 (%) vs occluded fraction, one line per model."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    modes = result['modes']
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    x = result['occluded_fraction']
    for ax, mode in zip(axes[0], modes):
        for name, m in result['models'].items():
            ax.plot(x, [100 * v for v in m[mode]], marker='o', label=name)
        ax.set_title(f'patch {mode} ({result["num_images"]} images, seed {result["seed"]})')
        ax.set_xlabel('occluded fraction of patches')
        ax.set_ylabel('top-1 (%)')
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    """Top-1 (%) per model and mode (rows) at each ratio (columns)."""
    w = max(len('model'), *(len(n) for n in result['models'])) + 2
    head = f'{"model":<{w}}{"mode":<6}' + ''.join(f'{r:>7.2f}' for r in result['ratios'])
    lines = [head]
    for name, m in result['models'].items():
        for mode in result['modes']:
            lines.append(f'{name:<{w}}{mode:<6}' + ''.join(f'{100 * v:>7.2f}' for v in m[mode]))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    t0 = time.time()
    raw, labels = load_fmnist('test', args.num_images, root=args.data_root, normalize=False)
    result: dict[str, Any] = dict(
        ratios=list(args.ratios),
        modes=list(args.modes),
        num_images=len(raw),
        seed=args.seed,
        data_root=args.data_root,
        models={},
    )
    noise = None
    for name, config, ckpt in args.models:
        model, mean, std = build_classifier(config, ckpt)
        model.to(args.device)
        fn = ViTOcclusionClassifier(model)
        c = fn.backbone.patch_embed.proj.in_channels
        mean_t = torch.tensor(mean).view(-1, 1, 1)
        std_t = torch.tensor(std).view(-1, 1, 1)
        images = ((raw.expand(-1, c, -1, -1) - mean_t) / std_t).to(args.device)
        gh, gw = fn.backbone.grid_of(images)
        if noise is None:
            result['num_patches'] = gh * gw
            result['occluded_patches'] = [num_occluded(r, gh * gw) for r in args.ratios]
            result['occluded_fraction'] = [k / (gh * gw) for k in result['occluded_patches']]
            gen = torch.Generator().manual_seed(args.seed)
            noise = torch.rand(len(raw), gh * gw, generator=gen)
        elif gh * gw != result['num_patches']:
            raise SystemExit(
                f'{name}: {gh * gw} patches per image, the first model has '
                f'{result["num_patches"]}; occlusion needs the same patch grid for every model'
            )
        entry: dict[str, Any] = dict(config=config, checkpoint=ckpt, mean=mean, std=std)
        for mode in args.modes:
            entry[mode] = occlusion_curve(
                fn,
                images,
                labels.to(args.device),
                args.ratios,
                mode,
                seed=args.seed,
                batch_size=args.batch_size,
                noise=noise.to(args.device),
            )
            logger.info('%s %s: %s', name, mode, ' '.join(f'{v:.4f}' for v in entry[mode]))
        result['models'][name] = entry
    result['seconds'] = round(time.time() - t0, 2)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.name}.json').write_text(json.dumps(result, indent=2))
    plot(result, out / f'{args.name}.png')
    sys.stdout.write(format_table(result) + '\n')
    logger.info('wrote %s and %s', out / f'{args.name}.png', out / f'{args.name}.json')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
