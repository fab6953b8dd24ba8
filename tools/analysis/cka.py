"""Linear CKA of every student block vs every teacher block, as a heat map and a JSON.

The G2SD paper (Huang et al., CVPR 2023, arXiv 2302.14771) and D-MAE (Bai et al., CVPR 2023)
compare a distilled student's token representations with its teacher's by linear CKA
(Kornblith et al., ICML 2019). This tool loads two encoders of the one ViT from checkpoints
(any format ``g2sd.checkpoint.load_pretrained(..., use='backbone')`` reads: our students, the
MAE teacher, classifiers), runs a class-balanced set of Fashion-MNIST images (or any folder of
idx files in that layout) through both, takes each block's patch tokens (mean over the patches
per image, or every patch token as a row with ``--tokens all``) and writes
``<out-dir>/<name>.png`` (rows: student blocks, columns: teacher blocks, annotated) and
``<out-dir>/<name>.json`` (matrix, archs, checkpoints, images, best teacher block per student
block, blocks numbered from 1). The matrix is also printed.

Example::

    python tools/analysis/cka.py \\
        --student-ckpt work_dirs/demo/g2sd_student/student.pth \\
        --teacher-ckpt checkpoints/fmnist_mae_vit-teacher.pth \\
        --num-images 1000 --out-dir work_dirs/analysis/cka_g2sd
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tools'))
from demo import ARCHS, TEACHER_CKPT, build_encoder, load_fmnist, parse_arch  # noqa: E402

from g2sd.analysis.cka import TOKENS, block_features, cka_matrix  # noqa: E402

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'

logger = logging.getLogger('g2sd.analysis.cka_tool')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (errors exit with status 2 and the offending value)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--student-ckpt', required=True, help='student checkpoint')
    parser.add_argument(
        '--teacher-ckpt',
        default=str(TEACHER_CKPT),
        help='teacher checkpoint (default: the shipped MAE teacher %(default)s)',
    )
    arch_help = f'{" | ".join(ARCHS)} | a JSON object / .json file of ViT kwargs'
    parser.add_argument(
        '--student-arch', default='fmnist-student', help=f'{arch_help} (default: %(default)s)'
    )
    parser.add_argument(
        '--teacher-arch', default='fmnist-teacher', help=f'{arch_help} (default: %(default)s)'
    )
    parser.add_argument(
        '--num-images', type=int, default=500, help='class-balanced images (default: %(default)s)'
    )
    parser.add_argument(
        '--tokens',
        choices=TOKENS,
        default='mean',
        help="'mean': one row per image (mean patch token); 'all': every patch token a row",
    )
    parser.add_argument(
        '--data-root', default=DEFAULT_ROOT, help='folder of Fashion-MNIST-layout idx files'
    )
    parser.add_argument('--split', choices=('train', 'test'), default='test', help='image split')
    parser.add_argument('--batch-size', type=int, default=256, help='images per forward pass')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='torch device'
    )
    parser.add_argument('--out-dir', default='work_dirs/analysis/cka', help='output folder')
    parser.add_argument('--name', default='cka', help='output file stem (<name>.png / .json)')
    args = parser.parse_args(argv)
    if args.num_images < 2:
        parser.error(f'--num-images must be >= 2 (CKA centres over images), got {args.num_images}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    for side in ('student', 'teacher'):
        ckpt = Path(getattr(args, f'{side}_ckpt'))
        if not ckpt.is_file():
            parser.error(f'--{side}-ckpt {str(ckpt)!r} is not a file')
        try:
            setattr(args, f'{side}_arch', parse_arch(getattr(args, f'{side}_arch')))
        except ValueError as e:
            parser.error(f'--{side}-arch: {e}')
    chans = [arch.get('in_chans', 3) for arch in (args.student_arch, args.teacher_arch)]
    if chans[0] != chans[1]:
        parser.error(f'student in_chans {chans[0]} != teacher in_chans {chans[1]}')
    return args


def heat_map(matrix: torch.Tensor, out: Path, title: str) -> None:
    """Annotated heat map of ``matrix`` (student blocks, teacher blocks) in [0, 1]."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * cols, 1.0 + 0.7 * rows))
    im = ax.imshow(matrix.numpy(), vmin=0.0, vmax=1.0, cmap='viridis', origin='lower')
    for i in range(rows):
        for j in range(cols):
            v = float(matrix[i, j])
            ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=8,
                    color='black' if v > 0.6 else 'white')  # fmt: skip
    ax.set_xticks(range(cols), [str(j + 1) for j in range(cols)])
    ax.set_yticks(range(rows), [str(i + 1) for i in range(rows)])
    ax.set_xlabel('teacher block')
    ax.set_ylabel('student block')
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label='linear CKA')
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Compute the CKA matrix, write ``<name>.png`` and ``<name>.json``; return 0."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    device = torch.device(args.device)
    in_chans = args.student_arch.get('in_chans', 3)
    images = load_fmnist(args.split, args.num_images, root=args.data_root, in_chans=in_chans)[0]
    feats = {}
    for side in ('student', 'teacher'):
        ckpt = Path(getattr(args, f'{side}_ckpt'))
        enc = build_encoder(getattr(args, f'{side}_arch'), ckpt).to(device)
        feats[side] = block_features(enc, images, batch=args.batch_size, tokens=args.tokens)
        logger.info('%s: %d blocks from %s', side, len(feats[side]), ckpt)
    if feats['student'][0].shape[0] != feats['teacher'][0].shape[0]:
        raise ValueError(
            f'--tokens all needs the same patch count on both sides: student gives '
            f'{feats["student"][0].shape[0]} rows, teacher {feats["teacher"][0].shape[0]}'
        )
    matrix = cka_matrix(feats['student'], feats['teacher'])
    best = matrix.argmax(dim=1)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / f'{args.name}.png', out_dir / f'{args.name}.json'
    title = (
        f'linear CKA ({args.tokens} tokens, {len(images)} {args.split} images)\n'
        f'{Path(args.student_ckpt).parent.name}/{Path(args.student_ckpt).name} vs '
        f'{Path(args.teacher_ckpt).name}'
    )
    heat_map(matrix, png, title)
    record = dict(
        matrix=matrix.tolist(),
        rows='student blocks',
        cols='teacher blocks',
        student=dict(arch=args.student_arch, checkpoint=str(args.student_ckpt)),
        teacher=dict(arch=args.teacher_arch, checkpoint=str(args.teacher_ckpt)),
        num_images=len(images),
        tokens=args.tokens,
        rows_per_block=feats['student'][0].shape[0],
        data_root=str(args.data_root),
        split=args.split,
        block_numbering='1-based (block 1 = the first transformer block)',
        best_teacher_block=[int(j) + 1 for j in best],
        best_cka=[float(matrix[i, j]) for i, j in enumerate(best)],
    )
    js.write_text(json.dumps(record, indent=2) + '\n')

    lines = [f'linear CKA, rows: student blocks, columns: teacher blocks ({args.tokens} tokens)']
    lines.append('     ' + ''.join(f'{f"T{j + 1}":>7}' for j in range(matrix.shape[1])))
    for i, row in enumerate(matrix.tolist()):
        lines.append(f'{f"S{i + 1}":<5}' + ''.join(f'{v:>7.3f}' for v in row))
    lines += [f'heat map: {png}', f'json: {js}']
    sys.stdout.write('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
