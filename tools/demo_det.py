"""Detection part of the G2SD demo: the paper's COCO rows on Fashion-MNIST canvases, on CPU.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) fine-tunes each small ViT as a ViTDet Mask R-CNN and compares the MAE
student, the generic-distillation student fine-tuned plainly ("G2SD w/o SD") and with FRS
specific distillation from a ViTDet teacher ("G2SD"). This script reproduces those rows at
toy scale, every step through the project's runner and configs:

1. the COCO-format canvases of pasted Fashion-MNIST items
   (``tools/dataset/make_fmnist_coco.py``; class = item, box and mask from the silhouette);
2. the pre-trained 48-d students (MAE and G2SD generic distillation) from ``tools/demo.py``'s
   work dir; missing ones are made by running ``tools/demo.py`` first;
3. the detection teacher: the shipped ``checkpoints/fmnist_vitdet-teacher.pth`` (made by
   ``configs/det/vitdet_teacher_fmnist.py``), or trained now with ``--train-teacher``;
4. the three rows with ``configs/det/vitdet_{mae,g2sd_nosd,g2sd}_fmnist.py``;
5. box / mask AP (mmdet's ``CocoMetric``) of every model on the val canvases with
   ``tools/test.py``.

Example::

    python tools/demo.py && python tools/demo_det.py          # ~10 min on 2 cores
    python tools/demo_det.py --iters 20 --num-train 64 --num-val 16   # smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from demo import (  # noqa: E402  (the one subprocess runner of the demos)
    evaluate_checkpoint,
    last_checkpoint,
    run_logged,
    train,
)

DET_TEACHER = REPO / 'checkpoints' / 'fmnist_vitdet-teacher.pth'
MAE_TEACHER = REPO / 'checkpoints' / 'fmnist_mae_vit-teacher.pth'
TEACHER_CFG = 'configs/det/vitdet_teacher_fmnist.py'
#: (row, config, student init, distilled)
ROWS = (
    ('MAE', 'configs/det/vitdet_mae_fmnist.py', 'mae', False),
    ('G2SD w/o SD', 'configs/det/vitdet_g2sd_nosd_fmnist.py', 'g2sd', False),
    ('G2SD', 'configs/det/vitdet_g2sd_fmnist.py', 'g2sd', True),
)
METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50')

logger = logging.getLogger('g2sd.demo_det')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help="tools/demo.py's work dir")
    parser.add_argument('--iters', type=int, default=None, help='student iterations (config)')
    parser.add_argument('--teacher-iters', type=int, default=None, help='teacher iterations')
    parser.add_argument('--num-train', type=int, default=1000, help='train canvases')
    parser.add_argument('--num-val', type=int, default=200, help='val canvases')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed')
    parser.add_argument(
        '--det-teacher',
        default=str(DET_TEACHER),
        help='fine-tuned detection teacher (default: the shipped one, made by '
        f'{TEACHER_CFG}); trained now when missing',
    )
    parser.add_argument(
        '--train-teacher', action='store_true', help='fine-tune the teacher now even if shipped'
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


def length_options(iters: int | None) -> list[str]:
    """cfg-options that change a run's length, keeping the schedule's shape."""
    if iters is None:
        return []
    milestones = [max(1, round(iters * 163889 / 184375)), max(1, round(iters * 177546 / 184375))]
    return [
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'param_scheduler.1.end={iters}',
        f'param_scheduler.1.milestones=[{milestones[0]},{milestones[1]}]',
        f'default_hooks.checkpoint.interval={iters}',
    ]


def data_options(root: Path) -> list[str]:
    """cfg-options pointing every dataloader at the generated canvases."""
    base = f'{root}/'
    return [
        f'train_dataloader.dataset.data_root={base}',
        f'val_dataloader.dataset.data_root={base}',
        f'test_dataloader.dataset.data_root={base}',
        f'val_evaluator.ann_file={base}annotations/instances_val.json',
        f'test_evaluator.ann_file={base}annotations/instances_val.json',
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    work = (REPO / args.work_dir).resolve()
    students = {
        'mae': work / 'mae_student' / 'student.pth',
        'g2sd': work / 'g2sd_student' / 'student.pth',
    }
    if not all(p.exists() for p in students.values()):
        logger.info('pre-trained students missing under %s: running tools/demo.py', work)
        demo_cmd = [sys.executable, str(REPO / 'tools' / 'demo.py'), '--work-dir', str(work)]
        run_logged(demo_cmd + args.demo_args.split(), work / 'demo.log')

    det_dir = work / 'det'
    data = det_dir / 'data'
    make = [sys.executable, str(REPO / 'tools' / 'dataset' / 'make_fmnist_coco.py')]
    make += ['--out', str(data), '--seed', str(args.seed), '--overwrite']
    make += ['--num-train', str(args.num_train), '--num-val', str(args.num_val)]
    run_logged(make, det_dir / 'dataset.log')
    dopts = data_options(data)

    times: dict[str, float] = {}
    teacher_row = 'teacher (96-d ViTDet)'
    teacher_dir = det_dir / 'teacher'
    teacher_ckpt = Path(args.det_teacher).resolve()
    if args.train_teacher or not teacher_ckpt.exists():
        opts = dopts + length_options(args.teacher_iters)
        opts.append(f'model.backbone.pretrained={MAE_TEACHER}')
        times[teacher_row] = train(TEACHER_CFG, teacher_dir, opts)
        teacher_ckpt = last_checkpoint(teacher_dir)
    else:
        logger.info('using the shipped detection teacher %s', teacher_ckpt)
    results = {
        teacher_row: evaluate_checkpoint(
            TEACHER_CFG, teacher_ckpt, teacher_dir / 'test.json', dopts
        )
    }

    for name, config, init, distilled in ROWS:
        wd = det_dir / name.lower().replace(' ', '_').replace('/', '')
        if distilled:
            extra = [f'model.teacher_checkpoint={teacher_ckpt}']
            init_opt = f'model.student.backbone.pretrained={students[init]}'
        else:
            extra, init_opt = [], f'model.backbone.pretrained={students[init]}'
        opts = dopts + length_options(args.iters) + extra + [init_opt]
        times[name] = train(config, wd, opts)
        results[name] = evaluate_checkpoint(
            config, last_checkpoint(wd), wd / 'test.json', dopts + extra
        )

    lines = [
        '',
        f'Fashion-MNIST canvases (Mask R-CNN, ViTDet), {args.num_val} val images; '
        f'students {args.iters or "config"} iterations on {args.num_train} canvases; teacher '
        + ('trained now' if teacher_row in times else f'shipped ({teacher_ckpt.name})'),
        f'{"row":<24}{"train s":>9}{"box AP":>8}{"AP50":>7}{"mask AP":>9}{"AP50":>7}',
    ]
    empty = []
    for name, m in results.items():
        t = f'{times[name]:.0f}' if name in times else 'shipped'
        if not all(k in m for k in METRICS):
            empty.append(name)  # CocoMetric reports nothing when no box passes score_thr
        box, box50, seg, seg50 = (100 * m.get(k, 0.0) for k in METRICS)
        lines.append(f'{name:<24}{t:>9}{box:>8.1f}{box50:>7.1f}{seg:>9.1f}{seg50:>7.1f}')
    if empty:
        lines.append(f'(no detection above the test score threshold: {", ".join(empty)}; AP 0)')
    text = '\n'.join(lines) + '\n'
    sys.stdout.write(text)
    (det_dir / 'results.txt').write_text(text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
