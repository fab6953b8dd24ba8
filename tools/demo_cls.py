"""Classification part of the G2SD demo on Fashion-MNIST: the paper's ablation rows on CPU.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) compares, for one small ViT, four fine-tuning rows: the MAE-pre-trained
student fine-tuned plainly ("MAE"), the same with specific distillation ("MAE + SD"), the
generic-distillation student fine-tuned plainly ("G2SD w/o SD") and with specific distillation
("G2SD"). This script reproduces that table at toy scale, every step through the project's
runner and configs:

1. the pre-trained 48-d students (MAE and G2SD generic distillation) from ``tools/demo.py``'s
   work dir (``mae_student/student.pth``, ``g2sd_student/student.pth``); missing ones are made
   by running ``tools/demo.py`` first;
2. the classification teacher: the 96-d MAE teacher fine-tuned with
   ``configs/cls/mae-ft_vit-teacher_fmnist.py``;
3. the four rows with ``configs/cls/{mae,g2sd}-{ft,sd}_vit-student_fmnist.py``;
4. top-1 / top-5 of every model on the Fashion-MNIST test set with ``tools/test.py``.

Example::

    python tools/demo.py && python tools/demo_cls.py          # ~15 min on 2 cores
    python tools/demo_cls.py --epochs 1 --train-samples 2000 --test-samples 1000   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from demo import run_logged, train  # noqa: E402  (the one subprocess runner of the demos)

MAE_TEACHER = REPO / 'checkpoints' / 'fmnist_mae_vit-teacher.pth'
CLS_TEACHER = REPO / 'checkpoints' / 'fmnist_vit-teacher_cls.pth'
ROWS = (
    ('MAE', 'configs/cls/mae-ft_vit-student_fmnist.py', 'mae'),
    ('MAE + SD', 'configs/cls/mae-sd_vit-student_fmnist.py', 'mae'),
    ('G2SD w/o SD', 'configs/cls/g2sd-ft_vit-student_fmnist.py', 'g2sd'),
    ('G2SD', 'configs/cls/g2sd-sd_vit-student_fmnist.py', 'g2sd'),
)

logger = logging.getLogger('g2sd.demo_cls')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help="tools/demo.py's work dir")
    parser.add_argument('--epochs', type=int, default=5, help='student fine-tuning epochs')
    parser.add_argument('--teacher-epochs', type=int, default=5, help='teacher fine-tuning epochs')
    parser.add_argument('--train-samples', type=int, default=20000, help='images per epoch')
    parser.add_argument(
        '--teacher-samples', type=int, default=60000, help='teacher images per epoch'
    )
    parser.add_argument('--test-samples', type=int, default=10000, help='test images')
    parser.add_argument('--batch-size', type=int, default=128, help='even (mixup)')
    parser.add_argument(
        '--mae-teacher', default=str(MAE_TEACHER), help='MAE pre-trained teacher (with decoder)'
    )
    parser.add_argument(
        '--cls-teacher',
        default=str(CLS_TEACHER),
        help='fine-tuned classification teacher (default: the shipped one, made by '
        'configs/cls/mae-ft_vit-teacher_fmnist.py); trained now when missing',
    )
    parser.add_argument(
        '--train-teacher', action='store_true', help='fine-tune the teacher now even if shipped'
    )
    parser.add_argument(
        '--demo-args', default='', help='options for tools/demo.py when the students are missing'
    )
    args = parser.parse_args(argv)
    if args.batch_size % 2:
        parser.error(f'--batch-size must be even (mixup), got {args.batch_size}')
    return args


def schedule(epochs: int, samples: int, batch: int, test_samples: int) -> list[str]:
    """cfg-options of a run: length, data size, one checkpoint (the last), no mid-run val."""
    return [
        f'train_cfg.max_epochs={epochs}',
        f'train_cfg.val_interval={epochs}',
        f'train_dataloader.dataset.num_samples={samples}',
        f'train_dataloader.batch_size={batch}',
        f'val_dataloader.dataset.num_samples={test_samples}',
        f'default_hooks.checkpoint.interval={epochs}',
        'default_hooks.logger.interval=20',
    ]


def test(config: str, ckpt: Path, out: Path, test_samples: int, extra: list[str]) -> dict:
    """``tools/test.py`` on the Fashion-MNIST test set; returns its metrics."""
    cmd = [sys.executable, str(REPO / 'tools' / 'test.py'), str(REPO / config), str(ckpt)]
    cmd += ['--work-dir', str(out.parent / 'test'), '--out', str(out), '--cfg-options']
    cmd += [f'test_dataloader.dataset.num_samples={test_samples}', *extra]
    run_logged(cmd, out.parent / 'test.log')
    return json.loads(out.read_text())['test']


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
    mae_teacher = Path(args.mae_teacher)
    if not mae_teacher.exists():
        mae_teacher = (
            work / 'teacher' / 'fmnist_mae_vit-teacher.pth'
        )  # tools/demo.py --train-teacher
    if not mae_teacher.exists():
        raise SystemExit(f'no MAE teacher at {args.mae_teacher} or {mae_teacher}')

    cls_dir = work / 'cls'
    times: dict[str, float] = {}
    teacher_dir = cls_dir / 'teacher'
    teacher_cfg = 'configs/cls/mae-ft_vit-teacher_fmnist.py'
    teacher_row = 'teacher (96-d, fine-tuned)'
    teacher_ckpt = Path(args.cls_teacher).resolve()
    if args.train_teacher or not teacher_ckpt.exists():
        opts = schedule(
            args.teacher_epochs, args.teacher_samples, args.batch_size, args.test_samples
        )
        times[teacher_row] = train(
            teacher_cfg, teacher_dir, opts + [f'model.pretrained={mae_teacher}']
        )
        teacher_ckpt = teacher_dir / 'teacher.pth'
    else:
        logger.info('using the shipped classification teacher %s', teacher_ckpt)
    results = {
        teacher_row: test(
            teacher_cfg, teacher_ckpt, teacher_dir / 'test.json', args.test_samples, []
        )
    }
    opts = schedule(args.epochs, args.train_samples, args.batch_size, args.test_samples)
    for name, config, init in ROWS:
        wd = cls_dir / name.lower().replace(' + ', '_').replace(' ', '_').replace('/', '')
        extra = [f'model.teacher_checkpoint={teacher_ckpt}'] if '-sd_' in config else []
        key = 'model.student.pretrained' if '-sd_' in config else 'model.pretrained'
        times[name] = train(config, wd, opts + extra + [f'{key}={students[init]}'])
        ckpt = wd / f'epoch_{args.epochs}.pth'
        results[name] = test(config, ckpt, wd / 'test.json', args.test_samples, extra)

    lines = [
        '',
        f'Fashion-MNIST classification, {args.test_samples} test images; students fine-tuned '
        f'{args.epochs} epochs x {args.train_samples} images; teacher '
        + (
            f'{args.teacher_epochs} epochs x {args.teacher_samples}'
            if teacher_row in times
            else f'shipped ({teacher_ckpt.name})'
        ),
        f'{"row":<28}{"train s":>9}{"top-1":>8}{"top-5":>8}',
    ]
    for name, metrics in results.items():
        t = f'{times[name]:.0f}' if name in times else 'shipped'
        lines.append(f'{name:<28}{t:>9}{metrics["top1"]:>8.2f}{metrics["top5"]:>8.2f}')
    text = '\n'.join(lines) + '\n'
    sys.stdout.write(text)
    (cls_dir / 'results.txt').write_text(text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
