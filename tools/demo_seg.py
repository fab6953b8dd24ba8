"""Segmentation part of the G2SD demo: the paper's ADE20K rows on Fashion-MNIST canvases, on CPU.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) fine-tunes each small ViT as a UperNet and compares the MAE student, the
generic-distillation student fine-tuned plainly ("G2SD w/o SD") and with channel-wise
specific distillation of the class logits from a fine-tuned MAE UperNet teacher ("G2SD").
This script reproduces those rows at toy scale, every step through the project's runner and
configs:

1. the ADE-format canvases of pasted Fashion-MNIST items (``data/fmnist_ade``, made by
   ``tools/dataset/make_fmnist_ade.py`` when missing; 10 item classes + background);
2. the pre-trained 48-d students (MAE and G2SD generic distillation) from ``tools/demo.py``'s
   work dir; missing ones are made by running ``tools/demo.py`` first;
3. the segmentation teacher: the shipped ``checkpoints/fmnist_upernet-teacher.pth`` (made by
   ``configs/seg/upernet_teacher_fmnist.py``; missing: an error with the command, or
   ``--train-teacher`` to train it now);
4. the three rows with ``configs/seg/upernet_{mae,g2sd_nosd,g2sd}_fmnist.py``;
5. mIoU / mAcc / aAcc (mmseg's ``IoUMetric``, slide inference) of every model on the val
   canvases with ``tools/test.py``.

Only the table goes to stdout; every run's log is in its work dir (paths are logged).

Example::

    python tools/demo.py && python tools/demo_seg.py
    python tools/demo_seg.py --iters 20 --data /tmp/fmnist_ade --num-train 64 --num-val 16
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from demo import (  # noqa: E402  (the one subprocess runner of the demos)
    evaluate_checkpoint,
    last_checkpoint,
    run_logged,
    train,
)

SEG_TEACHER = REPO / 'checkpoints' / 'fmnist_upernet-teacher.pth'
MAE_TEACHER = REPO / 'checkpoints' / 'fmnist_mae_vit-teacher.pth'
TEACHER_CFG = 'configs/seg/upernet_teacher_fmnist.py'
DATA = 'data/fmnist_ade'
#: (row, config, student init, distilled)
ROWS = (
    ('MAE', 'configs/seg/upernet_mae_fmnist.py', 'mae', False),
    ('G2SD w/o SD', 'configs/seg/upernet_g2sd_nosd_fmnist.py', 'g2sd', False),
    ('G2SD', 'configs/seg/upernet_g2sd_fmnist.py', 'g2sd', True),
)
METRICS = ('mIoU', 'mAcc', 'aAcc')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

logger = logging.getLogger('g2sd.demo_seg')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help="tools/demo.py's work dir")
    parser.add_argument('--iters', type=int, default=None, help='student iterations (config)')
    parser.add_argument(
        '--teacher-iters', type=int, default=None, help='teacher iterations (--train-teacher)'
    )
    parser.add_argument(
        '--data',
        default=DATA,
        help=f'ADE-layout canvases (default {DATA}); made by '
        'tools/dataset/make_fmnist_ade.py when missing',
    )
    parser.add_argument('--num-train', type=int, default=1000, help='train canvases (new --data)')
    parser.add_argument('--num-val', type=int, default=200, help='val canvases (new --data)')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed (new --data)')
    parser.add_argument(
        '--seg-teacher',
        default=str(SEG_TEACHER),
        help=f'fine-tuned UperNet teacher (default: the shipped one, made by {TEACHER_CFG})',
    )
    parser.add_argument(
        '--train-teacher',
        action='store_true',
        help=f'fine-tune the teacher now with {TEACHER_CFG} (instead of --seg-teacher)',
    )
    parser.add_argument(
        '--demo-args', default='', help='options for tools/demo.py when the students are missing'
    )
    args = parser.parse_args(argv)
    for name in ('iters', 'teacher_iters', 'num_train', 'num_val'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    return args


def teacher_command() -> str:
    """The commands that make the shipped seg teacher (as in configs/seg/README.md)."""
    ckpt = SEG_TEACHER.relative_to(REPO)
    return '\n'.join(
        [
            f'  python tools/dataset/make_fmnist_ade.py --out {DATA} --seed 0',
            f'  python tools/train.py {TEACHER_CFG} --work-dir work_dirs/seg_teacher',
            '  python -c "from g2sd.checkpoint import atomic_save, load_file; '
            "ckpt = open('work_dirs/seg_teacher/last_checkpoint').read().strip(); "
            "sd = load_file(ckpt, trusted=True)['state_dict']; "
            f"atomic_save(sd, '{ckpt}')\"",
        ]
    )


def load_config(config: str) -> Any:
    """The mmengine ``Config`` of ``config`` (custom imports not executed)."""
    from mmengine.config import Config

    return Config.fromfile(str(REPO / config), import_custom_modules=False)


def length_options(config: str, iters: int | None) -> list[str]:
    """cfg-options that change a run's length to ``iters``, keeping the schedule's shape.

    Every ``begin`` / ``end`` of ``param_scheduler`` (warm-up, poly decay) is scaled by
    ``iters / train_cfg.max_iters``. The configs write ``end`` one past the last step (mmengine
    schedulers reach their final value at ``end - 1``; ``end = max_iters + 1`` gives the
    official mmcv poly curve), so ``end - 1`` is what scales (each ``end`` at least one past
    its ``begin``); the validation and checkpoint intervals become ``iters``.
    """
    if iters is None:
        return []
    cfg = load_config(config)
    max_iters = int(cfg.train_cfg.max_iters)
    opts = [
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
    ]
    schedulers = cfg.get('param_scheduler') or []
    keyed = (
        [('param_scheduler', schedulers)]
        if isinstance(schedulers, dict)
        else [(f'param_scheduler.{i}', s) for i, s in enumerate(schedulers)]
    )
    for key, sched in keyed:
        begin = round(int(sched.get('begin', 0)) * iters / max_iters)
        if 'begin' in sched:
            opts.append(f'{key}.begin={begin}')
        if 'end' in sched:
            last = int(min(sched['end'] - 1, max_iters))
            end = round(last * iters / max_iters) + 1
            opts.append(f'{key}.end={max(begin + 1, end)}')
    return opts


def data_options(config: str, root: Path) -> list[str]:
    """cfg-options pointing every dataloader of ``config`` at the canvases in ``root``.

    A dataset wrapper (``dataset.dataset``, e.g. ``RepeatDataset``) is followed.
    """
    cfg = load_config(config)
    opts = []
    for loader in LOADERS:
        if loader not in cfg or cfg[loader] is None:
            continue
        path, ds = f'{loader}.dataset', cfg[loader]['dataset']
        while 'data_root' not in ds and isinstance(ds.get('dataset'), dict):
            path, ds = f'{path}.dataset', ds['dataset']
        opts.append(f'{path}.data_root={root}/')
    return opts


def ensure_data(args: argparse.Namespace, seg_dir: Path) -> Path:
    """The canvases folder ``--data``, written by ``make_fmnist_ade.py`` when missing."""
    data = Path(args.data)
    data = (data if data.is_absolute() else REPO / data).resolve()
    if (data / 'images' / 'validation').is_dir() and (data / 'annotations' / 'training').is_dir():
        logger.info('using the canvases in %s', data)
        return data
    make = [sys.executable, str(REPO / 'tools' / 'dataset' / 'make_fmnist_ade.py')]
    make += ['--out', str(data), '--seed', str(args.seed), '--overwrite']
    make += ['--num-train', str(args.num_train), '--num-val', str(args.num_val)]
    run_logged(make, seg_dir / 'dataset.log')
    return data


def count_images(data: Path, split: str) -> int:
    """PNG images of ``split`` (``training`` / ``validation``) in the canvases folder."""
    return sum(1 for _ in (data / 'images' / split).glob('*.png'))


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    work = (REPO / args.work_dir).resolve()
    seg_dir = work / 'seg'
    teacher_ckpt = Path(args.seg_teacher).resolve()
    if not args.train_teacher and not teacher_ckpt.exists():
        raise SystemExit(
            f'segmentation teacher {teacher_ckpt} not found; make it with\n'
            f'{teacher_command()}\nor pass --train-teacher (trains it now) or --seg-teacher FILE'
        )
    students = {
        'mae': work / 'mae_student' / 'student.pth',
        'g2sd': work / 'g2sd_student' / 'student.pth',
    }
    if not all(p.exists() for p in students.values()):
        logger.info('pre-trained students missing under %s: running tools/demo.py', work)
        demo_cmd = [sys.executable, str(REPO / 'tools' / 'demo.py'), '--work-dir', str(work)]
        run_logged(demo_cmd + args.demo_args.split(), work / 'demo.log')

    data = ensure_data(args, seg_dir)
    times: dict[str, float] = {}
    teacher_row = 'teacher (96-d UperNet)'
    teacher_dir = seg_dir / 'teacher'
    if args.train_teacher:
        opts = data_options(TEACHER_CFG, data) + length_options(TEACHER_CFG, args.teacher_iters)
        opts.append(f'model.backbone.pretrained={MAE_TEACHER}')
        times[teacher_row] = train(TEACHER_CFG, teacher_dir, opts)
        teacher_ckpt = last_checkpoint(teacher_dir)
    else:
        logger.info('using the shipped segmentation teacher %s', teacher_ckpt)
    results = {
        teacher_row: evaluate_checkpoint(
            TEACHER_CFG, teacher_ckpt, teacher_dir / 'test.json', data_options(TEACHER_CFG, data)
        )
    }

    for name, config, init, distilled in ROWS:
        wd = seg_dir / name.lower().replace(' ', '_').replace('/', '')
        dopts = data_options(config, data)
        if distilled:
            extra = [f'model.teacher_checkpoint={teacher_ckpt}']
            init_opt = f'model.student.backbone.pretrained={students[init]}'
        else:
            extra, init_opt = [], f'model.backbone.pretrained={students[init]}'
        opts = dopts + length_options(config, args.iters) + extra + [init_opt]
        times[name] = train(config, wd, opts)
        results[name] = evaluate_checkpoint(
            config, last_checkpoint(wd), wd / 'test.json', dopts + extra
        )

    lines = [
        '',
        f'Fashion-MNIST canvases (UperNet, slide inference), {count_images(data, "validation")} '
        f'val images; students {args.iters or "config"} iterations on '
        f'{count_images(data, "training")} canvases; teacher '
        + ('trained now' if teacher_row in times else f'shipped ({teacher_ckpt.name})'),
        f'{"row":<24}{"train s":>9}{"mIoU":>8}{"mAcc":>8}{"aAcc":>8}',
    ]
    for name, m in results.items():
        t = f'{times[name]:.0f}' if name in times else 'shipped'
        cells = ''.join(f'{float(m[k]):>8.1f}' if k in m else f'{"-":>8}' for k in METRICS)
        lines.append(f'{name:<24}{t:>9}{cells}')
    lines.append(f'(mmseg IoUMetric in %, background counted as a class; logs under {seg_dir})')
    text = '\n'.join(lines) + '\n'
    sys.stdout.write(text)
    (seg_dir / 'results.txt').write_text(text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
