#!/usr/bin/env python
"""Convert a detectron2 ViTDet Mask R-CNN checkpoint to g2sd's mmdet ``MaskRCNN`` keys.

Inputs: detectron2 model-zoo ``.pkl`` files (``{'model': {name: numpy.ndarray},
'__author__': ..., 'matching_heuristics': ...}``, e.g. ViTDet-B ``model_final_61ccd1.pkl``,
the G2SD teacher) and detectron2 training ``.pth`` files (``{'model': state_dict,
'iteration': ...}``). Both are read safely: ``.pkl`` with an unpickler that admits numpy
arrays and plain containers only, ``.pth`` with ``torch.load(weights_only=True)``
(:func:`g2sd.checkpoint.load_file`).

Output: ``{'state_dict': {mmdet name: tensor}, 'meta': {...}}`` (mmdet ``load_from`` /
``init_cfg`` and ``g2sd.checkpoint.load_pretrained(detector, OUT, use='detector')``).
The key mapping and the checked equivalences (class order, box-delta weights, anchors)
are documented in :mod:`g2sd.det.convert`; every input key must map (else the unknown
keys are named and nothing is written). The file is written atomically.

Usage::

    python tools/convert/detectron2_to_mmdet.py model_final_61ccd1.pkl \\
        checkpoints/vitdet_b_mask_rcnn_mmdet.pth
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

# g2sd (and torch) are imported after argument parsing so that ``--help`` answers at once.

logger = logging.getLogger('detectron2_to_mmdet')
PROG = 'detectron2_to_mmdet.py'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Convert a detectron2 ViTDet Mask R-CNN checkpoint (.pkl model zoo or '
        '.pth) to the keys of the g2sd mmdet MaskRCNN (ViTDetBackbone + SimpleFPN).',
    )
    parser.add_argument('input', help='detectron2 checkpoint (.pkl or .pth)')
    parser.add_argument('output', help='output mmdet checkpoint (.pth)')
    return parser.parse_args(argv)


def convert(src: str, dst: str) -> dict[str, Any]:
    """Convert ``src`` (detectron2) to ``dst`` (mmdet); return the metadata written.

    Raises:
        CheckpointError: Unreadable input, no state dict, or not a detectron2 layout.
        ValueError: Keys without an mmdet counterpart, or a .safetensors output.
    """
    import g2sd
    from g2sd.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_file
    from g2sd.det.convert import detectron2_to_mmdet, is_detectron2_layout

    if dst.endswith('.safetensors'):
        raise ValueError(f'output must be a torch file (.pth), got {dst!r}')
    obj = load_file(src)
    sd = extract_state_dict(obj, source=src)
    if not is_detectron2_layout(sd):
        raise CheckpointError(
            f'{src}: not a detectron2 ViTDet checkpoint (no backbone.net.* / backbone.simfp_* / '
            f'proposal_generator.* / roi_heads.* keys); first keys: {", ".join(list(sd)[:5])}'
        )
    out = detectron2_to_mmdet(sd, source=src)
    meta: dict[str, Any] = {
        'format': 'g2sd_mmdet_detector',
        'source': os.path.basename(src),
        'source_format': 'detectron2',
        'g2sd_version': g2sd.__version__,
    }
    if isinstance(obj, dict):
        for key in ('__author__', 'iteration'):
            if isinstance(obj.get(key), (str, int)):
                meta[f'detectron2_{key.strip("_")}'] = obj[key]
    atomic_save({'state_dict': out, 'meta': meta}, dst)
    parts = sorted({k.split('.', 1)[0] for k in out})
    logger.info('converted %d tensors (%s) from %s -> %s', len(out), ', '.join(parts), src, dst)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; user errors become one line on stderr and exit code 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from g2sd.engine.cli import run_main

    run_main(lambda: convert(args.input, args.output), PROG)


if __name__ == '__main__':
    main()
    sys.exit(0)
