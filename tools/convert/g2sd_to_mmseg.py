#!/usr/bin/env python
"""Export a g2sd ViT UperNet segmentor (or a distilled student) to mmseg 1.x ``MAE`` keys.

Inputs: our mmseg ``EncoderDecoder`` checkpoints with :class:`g2sd.SegViTBackbone`
(mmengine ``state_dict`` + ``meta`` / ``message_hub``: the training state is read with numpy
data allow-listed and mmengine's ``HistoryBuffer`` as an inert stub, still
``torch.load(weights_only=True)``; see :func:`g2sd.checkpoint.load_file`), plain state dicts,
:class:`g2sd.DistillModel` checkpoints (``student.*`` is exported; the teacher and the
adapters are dropped) and bare backbone files in our layout.

Output: ``{'state_dict': {mmseg name: tensor}, 'meta': {...}}`` in the keys of mmseg's own
``mmseg.MAE`` backbone (``backbone.layers.{i}.{ln1, attn.qkv, attn.proj,
attn.relative_position_bias_table, attn.relative_position_index, gamma_1, gamma_2, ln2,
ffn.layers.0.0, ffn.layers.1}``, ``backbone.patch_embed.projection``), with the same neck
and heads: an mmseg config with ``backbone=dict(type='MAE', ..., init_values=1.0,
norm_cfg=dict(type='LN', eps=1e-6))`` loads it strictly (``load_from``). ``--qv-bias``
writes BEiT's ``q_bias`` / ``v_bias`` instead (``mmseg.BEiT(qv_bias=True)``; the key bias is
dropped, a softmax no-op). The mapping is :func:`g2sd.seg.convert.g2sd_to_mmseg`; keys
without an mmseg counterpart are named and nothing is written. An existing OUT is refused
unless ``--overwrite``; the file is written atomically.

Usage::

    python tools/convert/g2sd_to_mmseg.py work_dirs/upernet_g2sd_s/iter_160000.pth \\
        upernet_g2sd_s_mmseg.pth
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

# g2sd (and torch) are imported after argument parsing so that ``--help`` answers at once.

logger = logging.getLogger('g2sd_to_mmseg')
PROG = 'g2sd_to_mmseg.py'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Export a g2sd ViT UperNet checkpoint (g2sd.SegViTBackbone, or the student '
        'of a g2sd.DistillModel checkpoint) to the keys of mmseg 1.x MAE (or BEiT) backbones.',
    )
    parser.add_argument('input', help='g2sd segmentor checkpoint (.pth)')
    parser.add_argument('output', help='output mmseg checkpoint (.pth)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    parser.add_argument(
        '--qv-bias',
        action='store_true',
        help="write BEiT's q_bias / v_bias (mmseg BEiT, qv_bias=True) instead of qkv.bias (MAE)",
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
    overwrite: bool = False,
    qv_bias: bool = False,
    trusted: bool = True,
) -> dict[str, Any]:
    """Export ``src`` (ours) to ``dst`` (mmseg ``MAE`` keys); return the metadata written.

    Raises:
        CheckpointError: Unreadable input, no state dict, or already an mmseg / official
            layout.
        ValueError: Keys without an mmseg counterpart, an existing ``dst`` without
            ``overwrite``, or a .safetensors output.
    """
    import g2sd
    from g2sd.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_file
    from g2sd.seg.convert import (
        g2sd_to_mmseg,
        is_beit_layout,
        is_mmseg_vit_layout,
        select_segmentor,
    )

    if dst.endswith('.safetensors'):
        raise ValueError(f'output must be a torch file (.pth), got {dst!r}')
    if os.path.exists(dst) and not overwrite:
        raise ValueError(f'output {dst} exists; pass --overwrite to replace it')
    flat = extract_state_dict(load_file(src, trusted=trusted), source=src)
    if is_mmseg_vit_layout(flat):
        raise CheckpointError(f'{src}: already in mmseg ViT layout (layers.* keys)')
    if is_beit_layout(flat):
        raise CheckpointError(
            f'{src}: an official G2SD / BEiT layout; convert it to g2sd keys first '
            '(tools/convert/mmseg_to_g2sd.py)'
        )
    sd, dropped = select_segmentor(flat, source=src, whole=False)
    if not any(k.startswith(('backbone.blocks.', 'blocks.')) for k in sd):
        raise CheckpointError(
            f'{src}: no g2sd ViT backbone (backbone.blocks.* / blocks.* keys); first keys: '
            f'{", ".join(list(sd)[:5])}'
        )
    out = g2sd_to_mmseg(sd, qv_bias=qv_bias, source=src)
    meta: dict[str, Any] = {
        'format': 'mmseg_beit' if qv_bias else 'mmseg_mae',
        'source': os.path.basename(src),
        'g2sd_version': g2sd.__version__,
    }
    atomic_save({'state_dict': out, 'meta': meta}, dst)
    logger.info(
        'exported %d tensors from %s -> %s; dropped: %s',
        len(out),
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
        lambda: export(
            args.input,
            args.output,
            overwrite=args.overwrite,
            qv_bias=args.qv_bias,
            trusted=not args.no_mmengine_state,
        ),
        PROG,
    )


if __name__ == '__main__':
    main()
    sys.exit(0)
