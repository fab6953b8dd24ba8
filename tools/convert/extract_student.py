#!/usr/bin/env python
"""Extract the student encoder of a generic-distillation checkpoint as a plain backbone.

Inputs (format detected from the keys, see :mod:`g2sd.checkpoint`):

* our mmengine GD checkpoints (``state_dict`` with ``algorithm.student.*`` keys, plus
  ``meta`` / ``message_hub`` / ``optimizer``);
* our distiller state dicts (``student.*``);
* official G2SD GD checkpoints (``{'model': ...}`` with ``decoderfeature_pred.*``);
* MAE files (full or encoder-only): their encoder is written.

Output: the encoder in timm / MAE key layout (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.*``, ``norm.*``) with no decoder, projector or
``student.`` prefix, loadable by ``timm.create_model('g2sd_vit_*', pretrained=True,
pretrained_cfg_overlay=dict(file=OUTPUT))``, by mmdet / mmseg ``init_cfg`` and by
``g2sd.checkpoint.load_pretrained(model, OUTPUT, use='backbone')``.

Validation: the output is loaded strictly into a plain ViT built from its own shapes
(:func:`g2sd.checkpoint.load_state_dict_strict`) *before* anything is written, so wrong
shapes, extra keys and integer tensors are refused and no output file is left behind;
the file is written atomically (:func:`g2sd.checkpoint.save_state_dict`). Errors are one
line on stderr and exit code 1.

Safety: the input is read with ``torch.load(weights_only=True)``; for mmengine training
state only ``argparse.Namespace``, mmengine's ``HistoryBuffer`` and numpy arrays / scalars
are allow-listed (``trusted=True`` of :func:`g2sd.checkpoint.load_file`), so no code from
the file runs. Pass ``--no-mmengine-state`` to refuse even those.

Usage::

    python tools/convert/extract_student.py work_dirs/g2sd_gd_s/epoch_300.pth \\
        g2sd_vit_small_gd.safetensors
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

# g2sd (and torch) are imported after argument parsing so that ``--help`` answers at once.

logger = logging.getLogger('extract_student')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description='Extract the student encoder of a G2SD / MAE checkpoint as a plain '
        'backbone checkpoint (timm / MAE keys) for timm, mmdet, mmseg and g2sd.',
    )
    parser.add_argument('input', help='GD checkpoint (mmengine, official G2SD, distiller or MAE)')
    parser.add_argument('output', help='output file (.safetensors or .pth)')
    parser.add_argument(
        '--format',
        choices=('torch', 'safetensors'),
        default=None,
        help='output format (default: from the output suffix; .safetensors -> safetensors)',
    )
    parser.add_argument(
        '--keep-head', action='store_true', help='keep head.* if the input has a classifier'
    )
    parser.add_argument(
        '--no-mmengine-state',
        action='store_true',
        help='refuse mmengine training state (HistoryBuffer, numpy data) in the input',
    )
    return parser.parse_args(argv)


def _meta_of(obj: Any) -> dict[str, Any]:
    """Epoch / iteration of an mmengine or MAE checkpoint, if present."""
    out: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return out
    meta = obj.get('meta')
    for src in (meta if isinstance(meta, dict) else {}, obj):
        for key in ('epoch', 'iter'):
            value = src.get(key)
            if hasattr(value, 'item'):  # numpy / torch scalar
                value = value.item()
            if isinstance(value, (int, float)) and key not in out:
                out[key] = value
    return out


def validate_backbone(enc: dict[str, Any], source: str) -> None:
    """Load ``enc`` strictly into a plain ViT built from its shapes; raise if it does not fit.

    Raises:
        CheckpointError: No blocks / no square position grid, wrong shapes, extra or
            missing keys, or non-floating tensors.
    """
    import math

    from g2sd.checkpoint import CheckpointError, load_state_dict_strict
    from g2sd.models.vit import VisionTransformer

    proj = enc['patch_embed.proj.weight']
    blocks = sorted({int(k.split('.')[1]) for k in enc if k.startswith('blocks.')})
    pe = enc.get('pos_embed')
    if not blocks or pe is None or pe.ndim != 3 or 'blocks.0.mlp.fc1.weight' not in enc:
        raise CheckpointError(f'{source}: the encoder has no blocks / pos_embed / MLP weights')
    embed_dim, in_chans, patch = (int(x) for x in proj.shape[:3])
    prefix = 1 if 'cls_token' in enc else 0
    side = math.isqrt(max(pe.shape[1] - prefix, 0))
    if side * side != pe.shape[1] - prefix:
        raise CheckpointError(
            f'{source}: pos_embed {tuple(pe.shape)} is not a square grid (+{prefix} token)'
        )
    pool = 'avg' if 'fc_norm.weight' in enc else ('token' if prefix else '')
    head = enc.get('head.weight')
    try:
        model = VisionTransformer(
            img_size=side * patch,
            patch_size=patch,
            in_chans=in_chans,
            num_classes=int(head.shape[0]) if head is not None and head.ndim == 2 else 0,
            global_pool=pool,
            embed_dim=embed_dim,
            depth=blocks[-1] + 1,
            num_heads=1,  # no weight shape depends on the head count
            mlp_ratio=enc['blocks.0.mlp.fc1.weight'].shape[0] / embed_dim,
            qkv_bias='blocks.0.attn.qkv.bias' in enc,
            class_token=bool(prefix),
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f'{source}: cannot build a ViT for this encoder: {e}') from e
    load_state_dict_strict(model, enc, what='the plain ViT', resample=False, source=source)


def extract(
    src: str, dst: str, *, fmt: str | None = None, keep_head: bool = False, trusted: bool = True
) -> dict[str, Any]:
    """Write the student encoder of ``src`` to ``dst``; return the metadata written.

    Args:
        src: Input checkpoint.
        dst: Output path.
        fmt: ``'torch'`` or ``'safetensors'``; from the suffix of ``dst`` when None.
        keep_head: Keep ``head.*``.
        trusted: Allow mmengine training state in ``src`` (data classes only).

    Returns:
        Metadata stored with the weights.

    Raises:
        CheckpointError: Unreadable input or no ViT encoder in it.
        ValueError: ``fmt`` does not match the suffix of ``dst``.
    """
    import g2sd
    from g2sd.checkpoint import (
        detect_format,
        extract_state_dict,
        load_file,
        save_state_dict,
        to_encoder_state_dict,
    )

    if fmt is None:
        fmt = 'safetensors' if dst.endswith('.safetensors') else 'torch'
    if fmt == 'safetensors' and not dst.endswith('.safetensors'):
        raise ValueError(
            f'--format safetensors needs an output ending in .safetensors, got {dst!r}'
        )
    if fmt == 'torch' and dst.endswith('.safetensors'):
        raise ValueError(f'--format torch cannot write a .safetensors file: {dst!r}')
    obj = load_file(src, trusted=trusted)
    flat = extract_state_dict(obj, source=src)
    source_format = detect_format(flat, source=src)
    enc = to_encoder_state_dict(flat, keep_head=keep_head, source=src)
    validate_backbone(enc, src)
    blocks = {int(k.split('.')[1]) for k in enc if k.startswith('blocks.')}
    embed = enc['patch_embed.proj.weight'].shape[0]
    meta = {
        'format': 'g2sd_backbone',
        'source': os.path.basename(src),
        'source_format': source_format,
        'g2sd_version': g2sd.__version__,
        'embed_dim': int(embed),
        'depth': len(blocks),
        'num_params': int(sum(v.numel() for v in enc.values())),
        **_meta_of(obj),
    }
    dropped = sorted({k.split('.', 1)[0] for k in flat} - {k.split('.', 1)[0] for k in enc})
    save_state_dict(enc, dst, meta=meta)
    logger.info(
        'extracted %d tensors (%.2fM params, embed %d, depth %d) from %s [%s] -> %s [%s]; '
        'dropped: %s',
        len(enc),
        meta['num_params'] / 1e6,
        embed,
        len(blocks),
        src,
        source_format,
        dst,
        fmt,
        ', '.join(dropped) or 'nothing',
    )
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from g2sd.checkpoint import CheckpointError

    try:
        extract(
            args.input,
            args.output,
            fmt=args.format,
            keep_head=args.keep_head,
            trusted=not args.no_mmengine_state,
        )
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.stderr.write(f'extract_student: error: {"; ".join(lines)}\n')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
