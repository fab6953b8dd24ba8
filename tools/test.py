"""Test a checkpoint of any g2sd task; classification also on the ImageNet robustness sets.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) reports ImageNet-1k top-1 and a robustness table on ImageNet-V2,
ImageNet-A, ImageNet-R and ImageNet-Sketch. This tool has mmdet's ``tools/test.py`` surface
(``config checkpoint --work-dir --out --cfg-options --launcher``) plus one option per
robustness folder. Detection / segmentation configs are evaluated through the same runner
with the config's own ``test_evaluator`` (mmdet / mmseg metrics); the robustness folders
are for classification only. A distillation config (``type='g2sd.DistillModel'``) is tested with its
student alone (no teacher is built or loaded).

The checkpoint is loaded strictly (every model key filled, no stray key): our mmengine
training checkpoints (plain model or distillation wrapper, whose ``student.*`` part is
taken), ``SaveStudentHook`` exports and plain backbone state dicts (timm / MAE keys).

Robustness folders are read with ``g2sd.ImageFolder`` and the config's test pipeline;
class folders are mapped to ImageNet-1k indices (A / R: the 200-class subset of the logits;
V2: integer folders; Sketch: all 1000 wnids), see ``g2sd.cls.metrics``.

Examples::

    python tools/test.py configs/cls/g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py \\
        work_dirs/g2sd-sd_vit-s_mae-b_8xb128-200e_in1k/epoch_200.pth \\
        --imagenet-a data/imagenet-a --imagenet-r data/imagenet-r \\
        --imagenet-v2 data/imagenetv2-matched-frequency-format-val \\
        --imagenet-sketch data/imagenet-sketch/sketch --out results.json
    bash: torchrun --nproc_per_node 8 tools/test.py CONFIG CKPT --launcher pytorch
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import sys
from typing import Any

from mmengine.config import Config

from g2sd.engine.cli import add_common_args, apply_common_args, run_main
from g2sd.engine.cli import parse_args as _parse

# torch / mmengine.runner / g2sd are imported in main() so that --help stays fast.

ROBUSTNESS_SETS = ('imagenet-v2', 'imagenet-a', 'imagenet-r', 'imagenet-sketch')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (mmdet's names and meanings plus the robustness folders)."""
    parser = argparse.ArgumentParser(
        description="Test a g2sd checkpoint on the config's test set with the config's "
        'test_evaluator (classification top-1 / top-5, mmdet / mmseg metrics for det / seg '
        'configs); classification also on ImageNet robustness folders.'
    )
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='write the metrics of every set to this JSON file')
    add_common_args(parser)
    for name in ROBUSTNESS_SETS:
        parser.add_argument(
            f'--{name}',
            metavar='DIR',
            help=f'{name} class folders (classification only; evaluated on the matching '
            'ImageNet-1k classes)',
        )
    parser.add_argument(
        '--skip-test-set',
        action='store_true',
        help="evaluate only the robustness folders, not the config's test_dataloader",
    )
    return _parse(parser, argv)


def student_config(cfg: Config) -> bool:
    """Replace a distillation-wrapper model config by its student; True if it was one."""
    model = cfg.model
    if isinstance(model, dict) and 'student' in model and 'teacher' in model:
        cfg.model = model['student']
        return True
    return False


def load_strict(model: Any, checkpoint: str) -> int:
    """Load ``checkpoint`` into ``model`` (DDP unwrapped), refusing missing / extra keys.

    Returns:
        Number of tensors loaded.

    Raises:
        g2sd.checkpoint.CheckpointError: Unreadable file or keys that do not fit.
    """
    from mmengine.model import is_model_wrapper

    from g2sd.checkpoint import load_file, load_pretrained
    from g2sd.distill import plain_student_state_dict

    base = model.module if is_model_wrapper(model) else model
    sd = load_file(checkpoint, trusted=True)
    if not any(k.startswith('student.') for k in base.state_dict()):
        sd = plain_student_state_dict(sd)  # a distillation run's checkpoint, evaluated plainly
    return len(load_pretrained(base, sd, use='whole', source=checkpoint).loaded)


def robustness_loop_cfg(cfg: Config, root: str, name: str) -> tuple[dict, dict]:
    """Test dataloader and evaluator configs of one robustness folder."""
    if not osp.isdir(root):
        raise FileNotFoundError(f'--{name}: {root!r} is not a directory')
    dl = copy.deepcopy(cfg.test_dataloader)
    pipeline = dl['dataset'].get('pipeline')
    dl['dataset'] = dict(type='g2sd.ImageFolder', root=root, pipeline=pipeline)
    evaluator = dict(type='g2sd.TopKAccuracy', topk=(1, 5), class_map='imagenet', prefix=name)
    return dl, evaluator


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One row per evaluated set: top-1 / top-5 (in %) for classification, else every metric."""
    topk = all(any(k.endswith('top1') for k in m) for m in results.values())
    if not topk:
        return '\n'.join(
            f'{name}: ' + '  '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                    for k, v in metrics.items())
            for name, metrics in results.items()
        )  # fmt: skip
    lines = [f'{"set":<20}{"top-1":>8}{"top-5":>8}']
    for name, metrics in results.items():
        top1 = next((v for k, v in metrics.items() if k.endswith('top1')), float('nan'))
        top5 = next((v for k, v in metrics.items() if k.endswith('top5')), float('nan'))
        lines.append(f'{name:<20}{top1:>8.2f}{top5:>8.2f}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Entry point; returns ``{set name: metrics}``."""
    args = parse_args(argv)
    from mmengine.runner import TestLoop

    from g2sd.engine.runner import G2SDRunner, setup_cpu_distributed

    cfg = apply_common_args(Config.fromfile(args.config), args)
    wrapped = student_config(cfg)
    cfg.load_from = None
    cfg.resume = False
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg.pop(key, None)
    cfg.custom_hooks = []  # training hooks (teacher checks, exports) do not apply
    sets = {n: getattr(args, n.replace('-', '_')) for n in ROBUSTNESS_SETS}
    sets = {n: d for n, d in sets.items() if d}
    if sets and 'TopKAccuracy' not in str(cfg.get('test_evaluator')):
        raise SystemExit(
            f'--{next(iter(sets))} is for classification configs (test_evaluator TopKAccuracy); '
            f'{args.config} evaluates with {cfg.get("test_evaluator")!r}'
        )
    if args.skip_test_set and not sets:
        raise SystemExit('--skip-test-set needs at least one robustness folder')
    setup_cpu_distributed(cfg)
    runner = G2SDRunner.from_cfg(cfg)
    if wrapped:
        runner.logger.info('distillation config: testing the student alone')
    count = load_strict(runner.model, args.checkpoint)
    runner.logger.info(f'loaded {count} tensors from {args.checkpoint}')

    loops: dict[str, tuple[Any, Any]] = {}
    if not args.skip_test_set:
        loops['test'] = (cfg.test_dataloader, cfg.test_evaluator)
    for name, root in sets.items():
        loops[name] = robustness_loop_cfg(cfg, root, name)
    fp16 = bool((cfg.get('test_cfg') or {}).get('fp16', False))
    results: dict[str, dict[str, float]] = {}
    runner.call_hook('before_run')
    for name, (dl, evaluator) in loops.items():
        results[name] = TestLoop(runner, dl, evaluator, fp16=fp16).run()
    runner.call_hook('after_run')

    from mmengine.dist import is_main_process

    if is_main_process():
        table = format_table(results)
        runner.logger.info('\n' + table)
        sys.stdout.write(table + '\n')
        if args.out:
            os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(results, f, indent=2, default=float)  # numpy scalars (mmseg IoUMetric)
    return results


if __name__ == '__main__':
    run_main(main, 'test.py')
