#!/usr/bin/env python
"""Export a g2sd mmdet ViTDet Mask R-CNN (or a distilled student) to detectron2 ViTDet keys.

Inputs: our mmdet / mmengine checkpoints (``state_dict`` + ``meta`` / ``message_hub``; the
training state is read with numpy data allow-listed and mmengine's ``HistoryBuffer`` as an
inert stub, ``trusted=True`` of :func:`g2sd.checkpoint.load_file`), plain state dicts and
:class:`g2sd.DistillModel` checkpoints (``student.*`` is exported; the teacher and the
adapters are dropped).

Output, by the suffix of OUT: ``.pkl`` -> a detectron2 model-zoo pickle ``{'model':
{name: numpy.ndarray}, '__author__': 'g2sd', 'matching_heuristics': False}``; ``.pth`` ->
the same dict with torch tensors. detectron2 loads either with ``train.init_checkpoint``
(``DetectionCheckpointer``), names matching exactly. The mapping is
:func:`g2sd.det.convert.mmdet_to_detectron2`; keys without a detectron2 counterpart are
named and nothing is written. The file is written atomically.

Backbone initialisation: an input without a detector (a generic-distillation checkpoint,
a ``student.*`` GD distiller, an official G2SD GD file or an extracted backbone from
``extract_student.py``) is written as its ViT encoder in MAE keys (``cls_token``,
``pos_embed``, ``patch_embed.*``, ``blocks.*``, ``norm.*``) with ``matching_heuristics:
True``: the file ViTDet's ``train.init_checkpoint`` reads, exactly like MAE's
``mae_pretrain_vit_base.pth?matching_heuristics=True`` (detectron2 matches the names to
``backbone.net.*`` by suffix; ``cls_token`` / ``norm`` stay unused, as for MAE).

Usage::

    python tools/convert/mmdet_to_detectron2.py work_dirs/g2sd_det_s/iter_184375.pth \\
        g2sd_vitdet_s_mask_rcnn.pkl
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

# g2sd (and torch) are imported after argument parsing so that ``--help`` answers at once.

logger = logging.getLogger('mmdet_to_detectron2')
PROG = 'mmdet_to_detectron2.py'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Export a g2sd mmdet ViTDet Mask R-CNN checkpoint (or the student of a '
        'g2sd.DistillModel checkpoint) to detectron2 ViTDet keys (.pkl or .pth).',
    )
    parser.add_argument('input', help='mmdet / g2sd checkpoint (.pth)')
    parser.add_argument('output', help='output detectron2 file (.pkl: numpy pickle; .pth: torch)')
    parser.add_argument(
        '--scale-factors',
        type=float,
        nargs='+',
        default=None,
        help='the neck scale factors (default: read from the neck weights, e.g. 4 2 1 0.5)',
    )
    parser.add_argument(
        '--no-mmengine-state',
        action='store_true',
        help='refuse mmengine training state (HistoryBuffer, numpy data) in the input',
    )
    return parser.parse_args(argv)


def export(
    src: str,
    dst: str,
    *,
    scale_factors: Sequence[float] | None = None,
    trusted: bool = True,
) -> dict[str, Any]:
    """Export ``src`` (mmdet) to ``dst`` (detectron2); return the dict written, tensors aside.

    Raises:
        CheckpointError: Unreadable input or no detector in it.
        ValueError: Keys without a detectron2 counterpart, or an output suffix other than
            ``.pkl`` / ``.pth``.
    """
    import torch

    from g2sd.checkpoint import (
        CheckpointError,
        atomic_save,
        extract_state_dict,
        load_file,
        to_encoder_state_dict,
    )
    from g2sd.det.convert import is_detectron2_layout, mmdet_to_detectron2, select_detector

    if not dst.endswith(('.pkl', '.pth')):
        raise ValueError(f'output must end in .pkl (numpy pickle) or .pth (torch), got {dst!r}')
    obj = load_file(src, trusted=trusted)
    flat = extract_state_dict(obj, source=src)
    if is_detectron2_layout(flat):
        raise CheckpointError(f'{src}: already in detectron2 layout (backbone.net.* keys)')
    sd, dropped = select_detector(flat, source=src)
    heuristics = False
    if not any(k.startswith('backbone.') for k in sd):
        # No detector: a GD student / plain ViT (MAE keys) becomes ViTDet's init_checkpoint.
        try:
            out = to_encoder_state_dict(flat, source=src)
        except CheckpointError as e:
            raise CheckpointError(
                f'{src}: neither a detector (backbone.* / student.backbone.* keys) nor a ViT '
                f'encoder; first keys: {", ".join(list(flat)[:5])}'
            ) from e
        heuristics = True  # MAE names: detectron2 matches them to backbone.net.* by suffix
        logger.info('%s: ViT encoder (MAE keys) -> detectron2 init checkpoint', src)
    else:
        out = mmdet_to_detectron2(sd, scale_factors=scale_factors, source=src)
    payload: dict[str, Any] = {'__author__': 'g2sd', 'matching_heuristics': heuristics}
    if dst.endswith('.pkl'):
        payload['model'] = {
            k: (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy()
            for k, v in out.items()
        }
    else:
        payload['model'] = out
    atomic_save(payload, dst, plain_pickle=dst.endswith('.pkl'))
    logger.info(
        'exported %d tensors from %s -> %s; dropped: %s',
        len(out),
        src,
        dst,
        ', '.join(dropped) or 'nothing',
    )
    return {'__author__': 'g2sd', 'matching_heuristics': heuristics, 'num_tensors': len(out)}


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; user errors become one line on stderr and exit code 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from g2sd.engine.cli import run_main

    run_main(
        lambda: export(
            args.input,
            args.output,
            scale_factors=args.scale_factors,
            trusted=not args.no_mmengine_state,
        ),
        PROG,
    )


if __name__ == '__main__':
    main()
    sys.exit(0)
