"""Tests of tools/convert/extract_student.py (CLI and function)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import Dataset

import g2sd.models.timm_models  # noqa: F401  (registers g2sd_* names)
from g2sd import checkpoint as ck
from g2sd.models.mae import MaskedAutoencoderViT
from g2sd.models.vit import Mlp

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'convert' / 'extract_student.py'
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _load_tool():
    spec = importlib.util.spec_from_file_location('extract_student', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


class _Distiller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = MaskedAutoencoderViT(**TINY, **DEC, pixel_head=False)
        self.projector = Mlp(16, 24, 24)


def _timm_from(path: str) -> nn.Module:
    return timm.create_model(
        'g2sd_vit_small_patch16_224',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=path),
        **TINY,
    ).eval()


def _same_features(model: nn.Module, student: MaskedAutoencoderViT) -> bool:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(model.forward_features(x), student.eval().forward_features(x))


def test_help():
    out = _run('--help')
    assert out.returncode == 0
    assert 'student encoder' in out.stdout and '--format' in out.stdout


def test_cli_on_official_gd_checkpoint(tmp_path):
    mae = MaskedAutoencoderViT(**TINY, **DEC)
    sd = dict(mae.state_dict())
    sd.update({f'decoderfeature_pred.{k}': v for k, v in Mlp(16, 24, 24).state_dict().items()})
    src = str(tmp_path / 'checkpoint-299.pth')
    torch.save({'model': sd, 'epoch': 299, 'args': argparse.Namespace(lr=1e-3)}, src)
    dst = str(tmp_path / 'out' / 'student.pth')
    out = _run(src, dst)
    assert out.returncode == 0, out.stderr
    assert 'g2sd_official_gd' in out.stderr
    obj = ck.load_file(dst)
    assert obj['meta']['source_format'] == 'g2sd_official_gd' and obj['meta']['epoch'] == 299
    assert not any(k.startswith(('decoder', 'mask_token')) for k in obj['state_dict'])
    assert _same_features(_timm_from(dst), mae)


@pytest.mark.parametrize('suffix, fmt', [('.safetensors', None), ('.pth', 'torch')])
def test_extract_mmengine_style_checkpoint(tmp_path, suffix, fmt):
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    dist = _Distiller()
    hub = MessageHub.get_instance('g2sd-test-extract')
    hub.update_scalar('train/loss', 0.5)
    src = str(tmp_path / 'epoch_3.pth')
    save_checkpoint(
        {
            'meta': {'epoch': 3, 'iter': 30},
            'state_dict': {'algorithm.' + k: v for k, v in dist.state_dict().items()},
            'message_hub': hub.state_dict(),
        },
        src,
    )
    dst = str(tmp_path / f'student{suffix}')
    meta = tool.extract(src, dst, fmt=fmt)
    assert meta['source_format'] == 'g2sd_distiller' and meta['epoch'] == 3
    assert (meta['embed_dim'], meta['depth']) == (32, 2)
    assert _same_features(_timm_from(dst), dist.student)
    # --no-mmengine-state refuses the same file
    assert tool.main([src, str(tmp_path / 'x.pth'), '--no-mmengine-state']) == 1


def test_bad_inputs_exit_non_zero(tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    out = _run(str(text), str(tmp_path / 'o.pth'))
    assert out.returncode == 1
    assert 'is not a readable PyTorch checkpoint' in out.stderr
    assert not (tmp_path / 'o.pth').exists()
    assert tool.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'o.pth')]) == 1
    good = str(tmp_path / 'g.pth')
    torch.save({'model': MaskedAutoencoderViT(**TINY, **DEC).state_dict()}, good)
    assert tool.main([good, str(tmp_path / 'o.pth'), '--format', 'safetensors']) == 1
    assert not os.path.exists(tmp_path / 'o.pth')


class _Images(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {'inputs': torch.randn(3, 32, 32)}


@pytest.mark.slow
def test_real_mmengine_runner_checkpoint(tmp_path):
    """A checkpoint written by an actual mmengine Runner (message_hub, optimizer, schedulers)."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class _GD(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.algorithm = _Distiller()

        def forward(self, inputs, data_samples=None, mode='loss'):
            enc = self.algorithm.student.forward_encoder(inputs, 0.5)
            dec = self.algorithm.student.forward_decoder(enc.latent, enc.ids_restore, predict=False)
            return {'loss': self.algorithm.projector(dec).pow(2).mean()}

    runner = Runner(
        model=_GD(),
        work_dir=str(tmp_path / 'work'),
        train_dataloader=dict(
            dataset=_Images(),
            batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=dict(type='CosineAnnealingLR', by_epoch=True, T_max=1),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
    )
    runner.train()
    src = str(tmp_path / 'work' / 'epoch_1.pth')
    dst = str(tmp_path / 'student.safetensors')
    assert tool.main([src, dst]) == 0
    assert _same_features(_timm_from(dst), runner.model.algorithm.student)


EXPORT = ROOT / 'tools' / 'convert' / 'export_cls_timm.py'


class _System:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('legacy', [False, True])
def test_gadget_file_is_refused_by_both_converters(tmp_path, legacy):
    marker = tmp_path / 'MARKER'
    src = str(tmp_path / 'evil.pth')
    obj = {'model': MaskedAutoencoderViT(**TINY, **DEC).state_dict(), 'x': _System(str(marker))}
    torch.save(obj, src, _use_new_zipfile_serialization=not legacy)
    for script in (SCRIPT, EXPORT):
        dst = tmp_path / 'out.pth'
        out = subprocess.run(
            [sys.executable, str(script), src, str(dst)], capture_output=True, text=True
        )
        assert out.returncode == 1
        errors = [line for line in out.stderr.splitlines() if 'error:' in line]
        assert len(errors) == 1 and f'{os.name}.system' in errors[0]
        assert 'Traceback' not in out.stderr and 'weights_only=False' not in out.stderr
        assert not dst.exists()
    assert not marker.exists()


@pytest.mark.parametrize(
    'damage, expected',
    [
        ('int', 'blocks.0.attn.qkv.weight: checkpoint torch.int64 vs model torch.float32'),
        ('extra', 'unexpected keys (1): blocks.0.attn.extra'),
        ('shape', 'blocks.1.mlp.fc1.weight: checkpoint (64, 32) vs model (128, 32)'),
    ],
)
def test_extract_refuses_bad_outputs(tmp_path, damage, expected):
    sd = dict(MaskedAutoencoderViT(**TINY, **DEC).state_dict())
    if damage == 'int':
        sd['blocks.0.attn.qkv.weight'] = sd['blocks.0.attn.qkv.weight'].long()
    elif damage == 'extra':
        sd['blocks.0.attn.extra'] = torch.zeros(3)
    else:
        sd['blocks.1.mlp.fc1.weight'] = torch.zeros(64, 32)
    src = str(tmp_path / 'bad.pth')
    torch.save({'model': sd}, src)
    dst = tmp_path / 'o.safetensors'
    out = _run(src, str(dst))
    assert out.returncode == 1 and expected in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not dst.exists() and os.listdir(tmp_path) == ['bad.pth']


def test_export_refuses_integer_tensors_and_writes_nothing(tmp_path):
    from g2sd.models.vit import VisionTransformer

    sd = VisionTransformer(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=4)
    sd = dict(sd.state_dict())
    sd['head.weight'] = sd['head.weight'].to(torch.int32)
    src = str(tmp_path / 'student.pth')
    torch.save(sd, src)
    dst = tmp_path / 'o.safetensors'
    out = subprocess.run(
        [sys.executable, str(EXPORT), src, str(dst), '--dist-head', 'drop'],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert 'head.weight: checkpoint torch.int32 vs model torch.float32' in out.stderr
    assert 'Traceback' not in out.stderr
    assert not dst.exists() and os.listdir(tmp_path) == ['student.pth']
