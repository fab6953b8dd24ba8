"""Train any g2sd stage from an mmengine config (mmdet's ``tools/train.py`` surface).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771): generic distillation, and the classification / detection / segmentation
specific distillations all run through this one tool; the task comes from the config.

Examples::

    python tools/train.py configs/pretrain/g2sd_vit-s_in1k.py --amp
    python tools/train.py CONFIG --resume                      # auto-resume in the work dir
    python tools/train.py CONFIG --cfg-options train_cfg.max_iters=10 model.algorithm.k=4
    bash tools/dist_train.sh CONFIG 8 --amp                    # torchrun, one node
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch   # also on CPU (gloo)
"""

from __future__ import annotations

import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction

# torch / mmengine.runner / g2sd.engine are imported in main() so that --help stays fast.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (mmdet's names and meanings)."""
    parser = argparse.ArgumentParser(
        description='Train a g2sd model (pre-training / distillation / fine-tuning; the task '
        'comes from the config).'
    )
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic mixed precision (fp16 on CUDA, bf16 autocast on CPU)',
    )
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
        help='resume from the given checkpoint; without a path, resume from the latest '
        'checkpoint in the work dir',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (e.g. train_cfg.max_iters=10, '
        'a list as key="[a,b]" or key=a,b, nested lists/tuples in quotes)',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm'],
        default='none',
        help='job launcher',
    )
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line options to it."""
    from g2sd.engine.runner import configure_amp

    cfg = Config.fromfile(args.config)  # runs the config's custom_imports
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    configure_amp(cfg, enable=args.amp)
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
    main()
