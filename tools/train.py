"""Train any g2sd stage from an mmengine config (mmdet's ``tools/train.py`` surface).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771): generic distillation, and the classification / detection / segmentation
specific distillations all run through this one tool; the task comes from the config.

Examples::

    python tools/train.py configs/pretrain/g2sd_vit-s_in1k.py --amp
    python tools/train.py CONFIG --resume                      # auto-resume in the work dir
    python tools/train.py CONFIG --cfg-options train_cfg.max_iters=10 model.target_block=4
    bash tools/dist_train.sh CONFIG 8 --amp                    # torchrun, one node
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch   # also on CPU (gloo)
"""

from __future__ import annotations

import argparse

from mmengine.config import Config

from g2sd.engine.cli import add_common_args, apply_common_args, run_main
from g2sd.engine.cli import parse_args as _parse

# torch / mmengine.runner / the g2sd runner are imported in main() so that --help stays fast.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (mmdet's names and meanings; shared ones from g2sd.engine.cli)."""
    parser = argparse.ArgumentParser(
        description='Train a g2sd model (pre-training / distillation / fine-tuning; the task '
        'comes from the config).'
    )
    parser.add_argument('config', help='train config file path')
    add_common_args(parser, amp=True)
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the ratio of the actual to auto_scale_lr.base_batch_size',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; without a path, resume from the latest intact '
        'checkpoint in the work dir. Weights, optimizer, schedulers, iteration and RNG states '
        'are restored; restored optimizer / scheduler values that differ from the config are '
        'named in a warning and win, unless --cfg-options resume_hparams=config',
    )
    return _parse(parser, argv)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line options to it."""
    cfg = Config.fromfile(args.config)  # runs the config's custom_imports
    apply_common_args(cfg, args)
    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr')
        if not scale or 'enable' not in scale or 'base_batch_size' not in scale:
            raise ValueError(
                '--auto-scale-lr needs auto_scale_lr=dict(enable=False, base_batch_size=N) in '
                f'the config, got auto_scale_lr={scale!r}'
            )
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    from mmengine.registry import RUNNERS

    from g2sd.engine.runner import G2SDRunner, setup_cpu_distributed

    cfg = build_config(args)
    setup_cpu_distributed(cfg)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else G2SDRunner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    run_main(main, 'train.py')
