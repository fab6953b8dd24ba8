#!/usr/bin/env python
"""Export a fine-tuned / distilled classification student for timm (``g2sd_vit_*`` names).

After specific distillation (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771) the student
has a class-token head and a distillation head; its eval output averages the two.

* ``--dist-head keep``: the weights load into ``g2sd_vit_{tiny,small,base}_distilled_patch16_224``
  (:mod:`g2sd.cls.timm_models`), whose eval output is the same average.
* ``--dist-head drop``: ``dist_token`` / ``dist_pos_embed`` / ``head_dist`` are removed and the
  weights load into the plain ``g2sd_vit_{tiny,small,base}_patch16_224``
  (:mod:`g2sd.models.timm_models`). The distillation token then no longer takes part in
  attention, so the outputs differ from the evaluated model's class head: this is a plain
  ViT with the distilled weights (for use as a backbone or for further fine-tuning).

Inputs: our mmengine checkpoints (``g2sd.ViTClassifier`` or the ``g2sd.DistillModel``
wrapper, whose ``student.*`` part is taken), ``SaveStudentHook`` exports (``student.pth``) or
plain backbone state dicts. Read with ``torch.load(weights_only=True)`` (mmengine state as
inert stubs, see ``g2sd.checkpoint.load_file``). The output (``.safetensors`` or ``.pth``)
is validated first (strict load into our model: shapes, keys, dtypes) and verified by
building the timm model from a temporary copy and comparing its logits with our model's;
only then is it written (atomically). A refused conversion leaves no file and prints one
error line (exit code 1).

The tag ``.gd_sd_in1k`` is used, and ``pretrained_cfg_overlay`` carries the class count, so
timm keeps the trained head(s).

Usage::

    python tools/convert/export_cls_timm.py work_dirs/g2sd-sd_vit-s_.../epoch_200.pth \\
        g2sd_vit_s_sd.safetensors --dist-head keep
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

# torch / timm / g2sd are imported after argument parsing so that ``--help`` answers at once.

logger = logging.getLogger('export_cls_timm')

ARCHS = {192: ('tiny', 3), 384: ('small', 6), 768: ('base', 12)}
DIST_PREFIXES = ('dist_token', 'dist_pos_embed', 'head_dist.')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description='Export a g2sd classification student (distillation head kept or dropped) '
        'as a timm checkpoint for the g2sd_vit_* model names.'
    )
    parser.add_argument('input', help='checkpoint (mmengine, SaveStudentHook export, plain)')
    parser.add_argument('output', help='output file (.safetensors or .pth)')
    parser.add_argument(
        '--dist-head',
        choices=('keep', 'drop'),
        default='keep',
        help='keep the distillation token / head (g2sd_vit_*_distilled_patch16_224, eval '
        'averages both heads) or drop them (g2sd_vit_*_patch16_224, class-token head only)',
    )
    parser.add_argument(
        '--no-verify', action='store_true', help='skip building the timm model from the output'
    )
    return parser.parse_args(argv)


def student_backbone_state_dict(obj: Any, source: str) -> dict[str, Any]:
    """The student's ViT state dict (timm / MAE keys) from any supported checkpoint."""
    from g2sd.checkpoint import CheckpointError, extract_state_dict, select_encoder

    # the ViT of a DistillModel (student.backbone.*), a ViTClassifier (backbone.*) or plain
    sd, _, _ = select_encoder(extract_state_dict(obj, source=source), source=source)
    if 'patch_embed.proj.weight' not in sd or 'head.weight' not in sd:
        raise CheckpointError(
            f'{source}: no classification ViT found (needs patch_embed.proj.weight and '
            f'head.weight); first keys: {list(sd)[:8]}'
        )
    return sd


def timm_spec(sd: dict[str, Any], dist_head: str, source: str) -> tuple[str, dict[str, Any]]:
    """(timm model name, create_model kwargs) for the exported state dict."""
    from g2sd.checkpoint import CheckpointError

    proj = sd['patch_embed.proj.weight']
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    if embed_dim not in ARCHS or patch != 16 or depth != 12:
        raise CheckpointError(
            f'{source}: the g2sd_vit_* timm names are ViT-Ti/S/B with patch 16 and 12 blocks; '
            f'this model has embed_dim {embed_dim}, patch {patch}, {depth} blocks'
        )
    size, _ = ARCHS[embed_dim]
    kwargs: dict[str, Any] = dict(num_classes=int(sd['head.weight'].shape[0]))
    if in_chans != 3:
        kwargs['in_chans'] = int(in_chans)
    if 'fc_norm.weight' in sd and 'norm.weight' not in sd:
        kwargs['global_pool'] = 'avg'
    if dist_head == 'keep':
        if 'dist_token' not in sd:
            raise CheckpointError(
                f'{source} has no distillation token / head; export it with --dist-head drop'
            )
        if 'dist_pos_embed' in sd:
            kwargs['dist_token_position'] = 'deit'
        return f'g2sd_vit_{size}_distilled_patch16_224.gd_sd_in1k', kwargs
    return f'g2sd_vit_{size}_patch16_224.gd_sd_in1k', kwargs


def _reference(sd: dict[str, Any], kwargs: dict[str, Any], dist_head: str, source: str) -> Any:
    """Our model for the export, loaded strictly (wrong shapes / extra keys / integer tensors)."""
    from g2sd.checkpoint import load_state_dict_strict
    from g2sd.models.vit import VisionTransformer

    arch = dict(patch_size=16, embed_dim=sd['pos_embed'].shape[-1], depth=12)
    arch['num_heads'] = ARCHS[arch['embed_dim']][1]
    ours_kwargs = {k: v for k, v in kwargs.items() if k != 'dist_token_position'}
    if dist_head == 'keep':
        from g2sd.cls.vit import DistilledVisionTransformer

        ref = DistilledVisionTransformer(
            **arch, **ours_kwargs, dist_token_position=kwargs.get('dist_token_position', 'end')
        )
    else:
        ref = VisionTransformer(**arch, **ours_kwargs)
    load_state_dict_strict(ref, sd, what=type(ref).__name__, resample=False, source=source)
    return ref.eval()


def _verify(path: str, name: str, kwargs: dict[str, Any], ref: Any) -> float:
    """Max |logit difference| between the timm model built from ``path`` and ``ref``."""
    import timm
    import torch

    import g2sd.cls.timm_models  # noqa: F401  (registers the distilled names)
    import g2sd.models.timm_models  # noqa: F401  (registers the plain names)

    overlay = dict(file=path, num_classes=kwargs['num_classes'])
    exported = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
    ).eval()
    x = torch.randn(
        2, kwargs.get('in_chans', 3), 224, 224, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        return (exported(x) - ref(x)).abs().max().item()


def convert(args: argparse.Namespace) -> None:
    """Validate, verify, then write the export (nothing is written when a step fails).

    Raises:
        CheckpointError: Unreadable input, no classification ViT, keys / shapes / dtypes
            that do not fit, or a timm model that does not reproduce the weights.
    """
    import os
    import tempfile

    from g2sd.checkpoint import CheckpointError, load_file, save_state_dict

    sd = student_backbone_state_dict(load_file(args.input, trusted=True), args.input)
    name, kwargs = timm_spec(sd, args.dist_head, args.input)
    if args.dist_head == 'drop':
        if 'dist_token' in sd:
            logger.warning(
                'dropping the distillation token removes it from the token sequence, so every '
                'token attends differently: the export is a plain ViT with the distilled '
                'weights (a backbone), not the class-head output of the evaluated model; use '
                '--dist-head keep to reproduce its accuracy'
            )
        sd = {k: v for k, v in sd.items() if not k.startswith(DIST_PREFIXES)}
    ref = _reference(sd, kwargs, args.dist_head, args.input)
    meta = dict(timm_name=name, create_kwargs=kwargs, source=str(args.input), producer='g2sd')
    if not args.no_verify:
        suffix = '.safetensors' if str(args.output).endswith('.safetensors') else '.pth'
        with tempfile.TemporaryDirectory() as tmp:
            probe = os.path.join(tmp, 'export' + suffix)
            save_state_dict(sd, probe, meta=meta)
            diff = _verify(probe, name, kwargs, ref)
        if diff > 1e-4:
            raise CheckpointError(
                f'verification failed: timm model {name} differs from the checkpoint '
                f'({diff:.3g}); nothing was written'
            )
    save_state_dict(sd, args.output, meta=meta)
    # The overlay's num_classes keeps timm from dropping a head of another class count.
    overlay = dict(file=str(args.output), num_classes=kwargs['num_classes'])
    call = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
    sys.stdout.write(
        f'wrote {len(sd)} tensors to {args.output}\n'
        f'load with: import g2sd.cls.timm_models; timm.create_model({name!r}, pretrained=True, '
        f'pretrained_cfg_overlay={overlay!r}, {call})\n'
    )
    if not args.no_verify:
        sys.stdout.write(
            f'verified: {name} reproduces the exported weights (max |diff| {diff:.2e})\n'
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 with one error line on stderr on bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    from g2sd.checkpoint import CheckpointError

    try:
        convert(args)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.stderr.write(f'export_cls_timm: error: {"; ".join(lines)}\n')
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
