"""Tests of g2sd.checkpoint: formats, strict loading, clear errors, safe reading."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from g2sd import checkpoint as ck
from g2sd.checkpoint import CheckpointError
from g2sd.layers.pos_embed import resample_pos_embed
from g2sd.models.mae import MaskedAutoencoderViT
from g2sd.models.vit import Mlp, VisionTransformer

ENC = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
# The encoder keys of ENC in the timm / MAE layout, written out (the expectation of the tests).
ENCODER_KEYS = frozenset(
    ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias']
    + [
        f'blocks.{i}.{m}.{p}'
        for i in range(2)
        for m in ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')
        for p in ('weight', 'bias')
    ]
    + ['norm.weight', 'norm.bias']
)


def _mae(pixel_head: bool = True, **kw) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**{**ENC, **DEC, 'pixel_head': pixel_head, **kw})


def _vit(**kw) -> VisionTransformer:
    return VisionTransformer(**{**ENC, 'num_classes': 0, **kw})


class _Distiller(nn.Module):
    """Layout of the lead's G2SD distiller: ``student`` + ``projector``."""

    def __init__(self) -> None:
        super().__init__()
        self.student = _mae(pixel_head=False)
        self.projector = Mlp(16, 24, 24)


class _Custom:
    """A class that is not on any allow-list."""


def _official_gd_sd() -> dict[str, torch.Tensor]:
    sd = dict(_mae(pixel_head=True).state_dict())
    for name, mlp in (
        ('decoderfeature_pred', Mlp(16, 24, 24)),
        ('encoderfeature_pred', Mlp(32, 48, 48)),
    ):
        sd.update({f'{name}.{k}': v for k, v in mlp.state_dict().items()})
    return sd


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def files(tmp_path) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """Synthetic checkpoint files of every format: name -> (path, source state dict)."""
    out = {}
    args = argparse.Namespace(model='mae_vit_tiny', mask_ratio=0.75)
    full = _mae().state_dict()
    enc = {k: v for k, v in full.items() if k in ENCODER_KEYS}
    gd = _official_gd_sd()
    timm_sd = _vit(num_classes=10).state_dict()
    ft = _vit(num_classes=10, global_pool='avg').state_dict()
    ours = _Distiller().state_dict()
    for name, obj, sd in (
        ('mae_full', {'model': full, 'args': args}, full),
        ('mae_encoder', {'model': enc, 'args': args}, enc),
        ('mae_finetuned', {'model': ft, 'args': args, 'epoch': 99}, ft),
        (
            'g2sd_official_gd',
            {'model': gd, 'optimizer': {}, 'epoch': 299, 'scaler': {'scale': 1.0}, 'args': args},
            gd,
        ),
        ('timm', dict(timm_sd), timm_sd),
        ('g2sd_distiller', {'state_dict': ours, 'meta': {'epoch': 1}}, ours),
        ('ddp', {'model': {'module.' + k: v for k, v in full.items()}}, full),
    ):
        path = str(tmp_path / f'{name}.pth')
        torch.save(obj, path)
        out[name] = (path, sd)
    return out


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize(
    'name, fmt',
    [
        ('mae_full', 'mae_full'),
        ('mae_encoder', 'mae_encoder'),
        ('mae_finetuned', 'mae_encoder'),
        ('g2sd_official_gd', 'g2sd_official_gd'),
        ('timm', 'timm'),
        ('g2sd_distiller', 'g2sd_distiller'),
        ('ddp', 'mae_full'),
    ],
)
def test_detect_format_and_unwrap(files, name, fmt):
    path, sd = files[name]
    flat = ck.extract_state_dict(ck.load_file(path), source=path)
    assert _same(flat, dict(sd))
    assert ck.detect_format(flat) == fmt


def test_extract_state_dict_strips_algorithm_and_is_idempotent():
    sd = _Distiller().state_dict()
    wrapped = {'meta': {}, 'state_dict': {'algorithm.' + k: v for k, v in sd.items()}}
    flat = ck.extract_state_dict(wrapped)
    assert _same(flat, dict(sd))
    assert _same(ck.extract_state_dict(flat), flat)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_save_load_round_trip(tmp_path, suffix):
    sd = _vit().state_dict()
    path = str(tmp_path / f'w{suffix}')
    ck.save_state_dict(sd, path, meta={'epoch': 3, 'source': 'x'})
    assert sorted(os.listdir(tmp_path)) == [f'w{suffix}']
    obj = ck.load_file(path)
    assert _same(ck.extract_state_dict(obj), dict(sd))
    if suffix == '.pth':
        assert obj['meta'] == {'epoch': 3, 'source': 'x'}
    else:
        from safetensors import safe_open

        with safe_open(path, 'pt') as f:
            assert f.metadata() == {'epoch': '3', 'source': 'x'}


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match='not tensors: x'):
        ck.save_state_dict({'x': 1}, str(tmp_path / 'a.pth'))
    with pytest.raises(TypeError, match='JSON'):
        ck.save_state_dict({'w': torch.zeros(1)}, str(tmp_path / 'a.pth'), meta={'o': object()})
    assert not os.listdir(tmp_path)


def test_to_encoder_state_dict_every_format(files):
    full = files['mae_full'][1]
    ref = ck.to_encoder_state_dict(full)
    assert set(ref) == ENCODER_KEYS
    assert all(torch.equal(ref[k], full[k]) for k in ENCODER_KEYS)
    for name in ('g2sd_official_gd', 'ddp'):
        enc = ck.to_encoder_state_dict(ck.load_file(files[name][0]))
        assert set(enc) == ENCODER_KEYS
    ours = ck.to_encoder_state_dict(files['g2sd_distiller'][1])
    assert set(ours) == ENCODER_KEYS
    timm_sd = files['timm'][1]
    assert set(ck.to_encoder_state_dict(timm_sd)) == ENCODER_KEYS
    assert set(ck.to_encoder_state_dict(timm_sd, keep_head=True)) == ENCODER_KEYS | {
        'head.weight',
        'head.bias',
    }


def test_official_gd_to_distiller_matches_our_layout(files):
    path, gd = files['g2sd_official_gd']
    mapped = ck.official_gd_to_distiller(ck.load_file(path), source=path)
    target = _Distiller().state_dict()
    assert mapped.keys() == target.keys()
    assert torch.equal(mapped['projector.fc1.weight'], gd['decoderfeature_pred.fc1.weight'])
    assert torch.equal(mapped['student.blocks.1.attn.qkv.weight'], gd['blocks.1.attn.qkv.weight'])
    with pytest.raises(CheckpointError, match="got format 'mae_full'"):
        ck.official_gd_to_distiller(files['mae_full'][1])


# ------------------------------------------------------------------ loading per use
def test_load_mae_teacher(files):
    path, full = files['mae_full']
    teacher = _mae()
    report = ck.load_pretrained(teacher, path, use='mae_teacher')
    assert _same(teacher.state_dict(), dict(full))
    assert not report.missing_allowed and not report.unexpected_ignored
    no_pixel = _mae(pixel_head=False)
    report = ck.load_pretrained(no_pixel, path, use='mae_teacher')
    assert set(report.unexpected_ignored) == {
        'decoder_norm.weight',
        'decoder_norm.bias',
        'decoder_pred.weight',
        'decoder_pred.bias',
    }


def test_mae_teacher_refuses_encoder_only_release(files):
    path, _ = files['mae_encoder']
    with pytest.raises(CheckpointError) as info:
        ck.load_pretrained(_mae(), path, use='mae_teacher')
    msg = str(info.value)
    assert path in msg
    assert 'decoder_embed.weight' in msg and 'decoder_blocks.0.*' in msg
    assert 'mae_pretrain_vit_base_full.pth' in msg and 'encoder-only' in msg


@pytest.mark.parametrize('name', ['g2sd_official_gd', 'g2sd_distiller'])
def test_load_distiller_from_official_and_ours(files, name):
    path, sd = files[name]
    model = _Distiller()
    ck.load_pretrained(model, path, use='distiller')
    got = model.state_dict()
    if name == 'g2sd_distiller':
        assert _same(got, dict(sd))
    else:
        assert torch.equal(got['projector.fc2.bias'], sd['decoderfeature_pred.fc2.bias'])
        assert torch.equal(got['student.mask_token'], sd['mask_token'])


def test_distiller_use_refuses_other_formats(files):
    with pytest.raises(CheckpointError, match="use='distiller' needs a distiller checkpoint"):
        ck.load_pretrained(_Distiller(), files['mae_full'][0], use='distiller')


@pytest.mark.parametrize('name', ['mae_full', 'g2sd_official_gd'])
def test_load_whole_mae(files, name):
    path, sd = files[name]
    model = _mae()
    ck.load_pretrained(model, path, use='mae')
    assert torch.equal(model.decoder_pred.weight, sd['decoder_pred.weight'])
    ck.load_pretrained(_mae(pixel_head=False), path, use='mae')  # pixel head may be extra


@pytest.mark.parametrize(
    'name', ['mae_full', 'mae_encoder', 'g2sd_official_gd', 'timm', 'g2sd_distiller', 'ddp']
)
def test_backbone_from_any_format(files, name):
    path, _ = files[name]
    model = _vit(num_classes=7)
    report = ck.load_pretrained(model, path, use='backbone')
    flat = ck.extract_state_dict(ck.load_file(path))
    prefix = 'student.' if name == 'g2sd_distiller' else ''
    got = model.state_dict()
    assert all(torch.equal(got[k], flat[prefix + k]) for k in ENCODER_KEYS)
    assert {'head.weight', 'head.bias'} <= set(report.missing_allowed)  # 7 classes: kept at init


def test_backbone_global_pool_model_from_pretrain_and_finetune(files):
    model = _vit(num_classes=10, global_pool='avg')
    report = ck.load_pretrained(model, files['mae_encoder'][0], use='backbone')
    assert set(report.missing_allowed) == {
        'fc_norm.weight',
        'fc_norm.bias',
        'head.weight',
        'head.bias',
    }
    assert set(report.unexpected_ignored) == {'norm.weight', 'norm.bias'}
    path, ft = files['mae_finetuned']
    report = ck.load_pretrained(model, path, use='backbone')
    assert not report.missing_allowed
    assert _same(model.state_dict(), dict(ft))


def test_encoder_teacher(files):
    teacher = _vit()
    report = ck.load_pretrained(teacher, files['timm'][0], use='encoder_teacher')
    assert set(report.unexpected_ignored) == {'head.weight', 'head.bias'}
    ck.load_pretrained(teacher, files['mae_full'][0], use='encoder_teacher')  # decoder dropped
    with pytest.raises(CheckpointError, match='missing keys'):
        ck.load_pretrained(_vit(), files['mae_finetuned'][0], use='encoder_teacher')


def test_load_pretrained_from_state_dict_and_bad_use(files):
    ck.load_pretrained(_vit(), files['mae_full'][1], use='backbone')
    with pytest.raises(ValueError, match="got 'teacher'"):
        ck.load_pretrained(_vit(), files['mae_full'][1], use='teacher')
    with pytest.raises(TypeError, match='needs a MaskedAutoencoderViT'):
        ck.load_pretrained(_vit(), files['mae_full'][1], use='mae_teacher')


# ------------------------------------------------------------------ mismatches
def test_shape_mismatch_names_key_and_both_shapes(files):
    model = _vit(mlp_ratio=2.0)
    with pytest.raises(CheckpointError) as info:
        ck.load_pretrained(model, files['mae_encoder'][0], use='backbone')
    msg = str(info.value)
    assert files['mae_encoder'][0] in msg
    assert 'blocks.0.mlp.fc1.weight: checkpoint (128, 32) vs model (64, 32)' in msg


def test_unexpected_and_missing_keys_are_listed(files):
    sd = dict(files['mae_encoder'][1])
    sd['foo.weight'] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r'unexpected keys \(1\): foo.weight'):
        ck.load_pretrained(_vit(), sd, use='backbone')
    deep = _vit(depth=4)
    with pytest.raises(CheckpointError) as info:
        ck.load_state_dict_strict(deep, files['mae_encoder'][1], what='deep ViT')
    msg = str(info.value)
    assert 'missing keys (24)' in msg and 'and 14 more' in msg and 'deep ViT' in msg


def test_load_state_dict_strict_allow_lists_and_report(files, caplog, capsys):
    sd = dict(files['timm'][1])
    sd['extra.bias'] = torch.zeros(2)
    model = _vit(num_classes=3)
    with caplog.at_level(logging.INFO, logger='g2sd.checkpoint'):
        report = ck.load_state_dict_strict(
            model, sd, allow_missing=('head.*',), allow_unexpected=('extra.*',), what='vit'
        )
    assert report.missing_allowed == ['head.weight', 'head.bias']
    assert report.unexpected_ignored == ['extra.bias']
    assert len(report.loaded) == len(sd) - 3
    assert 'loaded 30 tensors into vit' in caplog.text and 'extra.bias' in caplog.text
    assert capsys.readouterr().out == ''


# ------------------------------------------------------------------ pos-embed resampling
def test_pos_embed_resampling_identity_and_new_grid(files):
    sd = files['mae_full'][1]
    same = _mae()
    report = ck.load_pretrained(same, sd, use='mae')
    assert report.resampled == []
    assert torch.equal(same.pos_embed, sd['pos_embed'])
    pe = sd['pos_embed']
    assert resample_pos_embed(pe, (4, 4), 1) is pe

    big = _mae(img_size=48)  # 6x6 grid instead of 4x4
    report = ck.load_pretrained(big, sd, use='mae')
    assert sorted(report.resampled) == ['decoder_pos_embed', 'pos_embed']
    assert big.pos_embed.shape == (1, 37, 32) and big.decoder_pos_embed.shape == (1, 37, 16)
    assert torch.equal(big.pos_embed[:, :1], pe[:, :1])  # class token untouched
    grid = pe[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)  # independent of the loader
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode='bicubic', align_corners=False)
    expected = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 36, 32)], dim=1)
    assert torch.allclose(big.pos_embed, expected)

    with pytest.raises(CheckpointError, match=r'pos_embed: checkpoint \(1, 17, 32\) vs model'):
        ck.load_pretrained(_mae(img_size=48), sd, use='mae', resample=False)


# ------------------------------------------------------------------ reading errors
def test_missing_file(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(CheckpointError, match='does not exist') as info:
        ck.load_pretrained(_vit(), path, use='backbone')
    assert path in str(info.value)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_file(tmp_path, suffix):
    good = str(tmp_path / f'good{suffix}')
    ck.save_state_dict(_vit().state_dict(), good)
    data = Path(good).read_bytes()
    bad = str(tmp_path / f'half{suffix}')
    Path(bad).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r'truncated or corrupt\?') as info:
        ck.load_file(bad)
    assert bad in str(info.value)


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('this is not a checkpoint\n')
    with pytest.raises(CheckpointError, match=r'is not a readable PyTorch checkpoint'):
        ck.load_file(path)


def test_unsafe_globals_are_named_and_refused(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save({'model': _vit().state_dict(), 'extra': _Custom()}, path)
    for trusted in (False, True):
        with pytest.raises(CheckpointError, match='refused for safety') as info:
            ck.load_file(path, trusted=trusted)
        assert f'{__name__}._Custom' in str(info.value)


def test_no_state_dict_or_not_a_vit(tmp_path):
    with pytest.raises(CheckpointError, match='no state dict found.*top-level keys: epoch'):
        ck.extract_state_dict({'epoch': 3}, source='x.pth')
    with pytest.raises(CheckpointError, match='not a ViT checkpoint'):
        ck.detect_format({'conv1.weight': torch.zeros(1)})


def _mmengine_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """An mmengine-style GD checkpoint with a real MessageHub state (HistoryBuffer, numpy)."""
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    hub = MessageHub.get_instance('g2sd-test-checkpoint')
    hub.update_scalar('train/loss', 0.25)
    hub.update_scalar('train/lr', np.float64(1e-3))
    hub.update_info('iter', 10)
    sd = _Distiller().state_dict()
    save_checkpoint(
        {
            'meta': {'epoch': 2, 'iter': 10, 'seed': np.int64(0), 'cfg': 'model = dict()'},
            'state_dict': {'algorithm.' + k: v for k, v in sd.items()},
            'message_hub': hub.state_dict(),
            'optimizer': torch.optim.AdamW(nn.Linear(2, 2).parameters()).state_dict(),
        },
        path,
    )
    return sd


def test_mmengine_training_checkpoint_needs_trusted(tmp_path):
    path = str(tmp_path / 'epoch_2.pth')
    sd = _mmengine_checkpoint(path)
    with pytest.raises(CheckpointError, match='HistoryBuffer') as info:
        ck.load_file(path)
    assert 'trusted=True' in str(info.value) and 'extract_student' in str(info.value)
    obj = ck.load_file(path, trusted=True)
    buf = obj['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, ck.MMEngineStateStub)  # inert stand-in, not mmengine's class
    assert buf.state['statistics_methods']['min'].startswith('<unresolved')
    model = _Distiller()
    ck.load_pretrained(model, path, use='distiller', trusted=True)
    assert _same(model.state_dict(), dict(sd))
