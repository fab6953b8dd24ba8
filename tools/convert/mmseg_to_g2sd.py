#!/usr/bin/env python
"""Convert an mmseg 1.x or official G2SD / BEiT ViT UperNet checkpoint to g2sd's keys.

Inputs: mmseg 1.x segmentors with ``mmseg.MAE`` / ``mmseg.BEiT`` backbones
(``backbone.layers.*``, ``backbone.patch_embed.projection.*``; mmengine checkpoints with
``state_dict`` + ``meta`` / ``message_hub``), official G2SD / BEiT segmentors (mmseg 0.x,
``backbone.blocks.*`` with ``q_bias`` / ``v_bias`` / ``relative_position_index`` and the
pyramid ``backbone.fpn1`` .. ``fpn4``), :class:`g2sd.DistillModel` checkpoints
(``student.*`` is converted, the rest dropped), and backbone-only files of either layout
(bare ``layers.*`` / ``blocks.*`` keys, possibly under ``model`` / ``state_dict``). Files
are read with ``torch.load(weights_only=True)`` (:func:`g2sd.checkpoint.load_file`; mmengine
training state is read as inert stubs unless ``--no-mmengine-state``).

Output: ``{'state_dict': {g2sd name: tensor}, 'meta': {...}}``: a whole segmentor loads with
``g2sd.checkpoint.load_pretrained(segmentor, OUT, use='segmentor')`` (or mmseg's
``load_from``) into an ``EncoderDecoder`` with :class:`g2sd.SegViTBackbone`; a backbone-only
file with ``use='backbone'``. The key mapping is documented in :mod:`g2sd.seg.convert`;
every input key must map (else the unknown keys are named and nothing is written). An
existing OUT is refused unless ``--overwrite``; the file is written atomically.

Usage::

    python tools/convert/mmseg_to_g2sd.py \\
        upernet_mae-base_fp16_8x2_512x512_160k_ade20k.pth checkpoints/upernet_mae_b_g2sd.pth
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

# g2sd (and torch) are imported after argument parsing so that ``--help`` answers at once.

logger = logging.getLogger('mmseg_to_g2sd')
PROG = 'mmseg_to_g2sd.py'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Convert an mmseg 1.x (MAE / BEiT backbone) or official G2SD / BEiT ViT '
        'UperNet checkpoint (or a backbone-only file) to the keys of g2sd '
        '(g2sd.SegViTBackbone + Feature2Pyramid neck + mmseg heads).',
    )
    parser.add_argument('input', help='mmseg / official checkpoint (.pth)')
    parser.add_argument('output', help='output g2sd checkpoint (.pth)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    parser.add_argument(
        '--no-mmengine-state',
        action='store_true',
        help='refuse mmengine training state (HistoryBuffer, numpy data) in the input',
    )
    return parser.parse_args(argv)


def convert(src: str, dst: str, *, overwrite: bool = False, trusted: bool = True) -> dict[str, Any]:
    """Convert ``src`` (mmseg 1.x / official layout) to ``dst`` (ours); return the metadata.

    Raises:
        CheckpointError: Unreadable input, no state dict, or neither layout.
        ValueError: Keys without a g2sd counterpart, an existing ``dst`` without
            ``overwrite``, or a .safetensors output.
    """
    import g2sd
    from g2sd.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_file
    from g2sd.checkpoint.formats import strip_prefixes
    from g2sd.seg.convert import is_beit_layout, is_mmseg_vit_layout, select_segmentor

    if dst.endswith('.safetensors'):
        raise ValueError(f'output must be a torch file (.pth), got {dst!r}')
    if os.path.exists(dst) and not overwrite:
        raise ValueError(f'output {dst} exists; pass --overwrite to replace it')
    obj = load_file(src, trusted=trusted)
    flat = strip_prefixes(extract_state_dict(obj, source=src), ('module.',))
    part = {k[len('student.') :]: v for k, v in flat.items() if k.startswith('student.')}
    probe = part or flat
    if is_mmseg_vit_layout(probe):
        layout = 'mmseg'
    elif is_beit_layout(probe):
        layout = 'official_beit'
    else:
        raise CheckpointError(
            f'{src}: neither an mmseg ViT (MAE / BEiT: backbone.layers.*, '
            'patch_embed.projection.*) nor an official G2SD / BEiT layout (attn.q_bias, '
            f'relative_position_index, backbone.fpn*); first keys: {", ".join(list(flat)[:5])}'
        )
    out, dropped = select_segmentor(flat, source=src, whole=False)
    whole = any(k.startswith('decode_head.') for k in out)
    meta: dict[str, Any] = {
        'format': 'g2sd_mmseg_segmentor' if whole else 'g2sd_backbone',
        'source': os.path.basename(src),
        'source_format': layout,
        'g2sd_version': g2sd.__version__,
    }
    atomic_save({'state_dict': out, 'meta': meta}, dst)
    parts = sorted({k.split('.', 1)[0] for k in out}) if whole else ['backbone']
    logger.info(
        'converted %d tensors (%s) from %s -> %s; dropped: %s',
        len(out),
        ', '.join(parts),
        src,
        dst,
        ', '.join(dropped) or 'nothing',
    )
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; user errors become one line on stderr and exit code 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from g2sd.engine.cli import run_main

    run_main(
        lambda: convert(
            args.input, args.output, overwrite=args.overwrite, trusted=not args.no_mmengine_state
        ),
        PROG,
    )


if __name__ == '__main__':
    main()
    sys.exit(0)
