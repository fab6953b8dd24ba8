"""Tests of the open loader: registered uses, wrapper formats, peers' files, dtypes, gadgets."""

from __future__ import annotations

import argparse
import builtins
import logging
import os

import pytest
import torch
from torch import nn

from g2sd import checkpoint as ck
from g2sd.checkpoint import CheckpointError
from g2sd.models.mae import MaskedAutoencoderViT
from g2sd.models.vit import VisionTransformer

ENC = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
# The encoder keys of ENC (timm / MAE layout), written out: the expectation of every test.
BLOCK = [
    f'blocks.{i}.{m}.{p}'
    for i in range(2)
    for m in ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')
    for p in ('weight', 'bias')
]
ENCODER_KEYS = sorted(
    ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias']
    + BLOCK
    + ['norm.weight', 'norm.bias']
)


def _vit(**kw) -> VisionTransformer:
    return VisionTransformer(**{**ENC, 'num_classes': 0, **kw})


def _mae() -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**ENC, **DEC)


def _rand(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) for k, v in sd.items()}


def _equal_to(model: nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    got = model.state_dict()
    return all(torch.equal(got[k], v) for k, v in expected.items())


# ------------------------------------------------------------------ registry
def test_uses_view_and_unknown_use():
    # the core's uses come first (plugins such as g2sd.det add theirs after them)
    assert tuple(ck.USES)[:6] == (
        'mae_teacher',
        'encoder_teacher',
        'backbone',
        'mae',
        'distiller',
        'whole',
    )
    assert 'whole' in ck.USES and 'teacher' not in ck.USES
    with pytest.raises(ValueError, match=r"one of \('mae_teacher'.*'whole'.*\), got 'teacher'"):
        ck.load_pretrained(_vit(), {'a': torch.zeros(1)}, use='teacher')
    with pytest.raises(ValueError, match='registered already'):
        ck.register_use('backbone', lambda *a: None)


def test_register_custom_use_vitdet_like():
    """A det backbone without cls_token / norm registers its own use from outside the core."""
    calls = []

    def vitdet(model, fmt, sd, source):
        calls.append((fmt, source))
        enc = {k: v for k, v in sd.items() if k not in ('cls_token', 'norm.weight', 'norm.bias')}
        return enc, (), ()

    ck.register_use('test_vitdet', vitdet, overwrite=True)
    try:
        assert 'test_vitdet' in ck.USES  # the view is live
        src = _rand(_vit().state_dict())
        model = _vit(class_token=False, global_pool='avg', num_classes=0)
        # pos_embed of the checkpoint has a class slot; this model has none: allow-list it.
        model_keys = set(model.state_dict())
        assert 'cls_token' not in model_keys
        sd = {k: v for k, v in src.items() if k in model_keys or k == 'cls_token'}
        report = ck.load_pretrained(
            model,
            sd,
            use='test_vitdet',
            allow_missing=('pos_embed', 'fc_norm.*', 'norm.*'),
            source='vitdet.pth',
        )
        assert calls == [('mae_encoder', 'vitdet.pth')]
        assert torch.equal(model.blocks[1].mlp.fc2.weight, src['blocks.1.mlp.fc2.weight'])
        assert 'pos_embed' in report.missing_allowed
    finally:
        ck.loading._USES.pop('test_vitdet', None)
    assert 'test_vitdet' not in ck.USES


def test_whole_use_strips_shared_prefixes_only():
    src = _rand(_vit().state_dict())
    model = _vit()
    ck.load_pretrained(model, {'student.backbone.' + k: v for k, v in src.items()}, use='whole')
    assert _equal_to(model, src)
    with pytest.raises(CheckpointError, match=r'missing keys \(1\): norm.bias'):
        ck.load_pretrained(_vit(), {k: v for k, v in src.items() if k != 'norm.bias'}, use='whole')

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)

    w = Wrapped()
    sd = {'backbone.weight': torch.ones(2, 2), 'backbone.bias': torch.ones(2)}
    ck.load_pretrained(w, sd, use='whole')  # model keys start with backbone.: kept
    assert torch.equal(w.backbone.bias, torch.ones(2))


def test_strip_prefixes():
    sd = {'module.student.a': 1, 'module.student.b': 2}
    assert ck.strip_prefixes(sd, ('module.', 'student.')) == {'a': 1, 'b': 2}
    assert ck.strip_prefixes(sd, ('student.',)) == sd
    kept = ck.strip_prefixes({'backbone.a': 1}, ('backbone.',), model_keys=['backbone.a'])
    assert kept == {'backbone.a': 1}


# ------------------------------------------------------------------ wrapper formats
def test_mm_backbone_checkpoint():
    enc = _rand(_vit().state_dict())
    sd = {'backbone.' + k: v for k, v in enc.items()}
    sd['neck.lateral.weight'] = torch.zeros(3, 3)
    sd['decode_head.conv_seg.weight'] = torch.zeros(2, 3)
    assert ck.detect_format(sd) == 'mm_backbone'
    for use in ('backbone', 'encoder_teacher'):
        model = _vit()
        report = ck.load_pretrained(model, {'state_dict': sd, 'meta': {}}, use=use)
        assert _equal_to(model, enc)
        assert report.dropped == ['decode_head', 'neck']
        assert report.fmt == 'mm_backbone'
        assert 'dropped checkpoint parts: 2: decode_head, neck' in report.summary()


def test_mae_lite_distillation_checkpoint():
    """MAE-Lite D-MAE run: ``module.model.*`` student MAE, ``tch_model.*`` teacher encoder."""
    student = _rand(_mae().state_dict())
    teacher = _rand(_vit(embed_dim=48).state_dict())
    sd = {'module.model.' + k: v for k, v in student.items()}
    sd.update({'module.tch_model.' + k: v for k, v in teacher.items()})
    sd['module.attn_adapter.adapter11.weight'] = torch.zeros(2, 2, 1, 1)
    obj = {'start_epoch': 400, 'model': sd, 'optimizer': {}, 'scaler': {}}
    flat = ck.extract_state_dict(obj)
    assert ck.detect_format(flat) == 'mae_lite'
    model = _vit()
    report = ck.load_pretrained(model, obj, use='backbone')
    expected = {k: student[k] for k in ENCODER_KEYS}
    assert _equal_to(model, expected)
    assert report.dropped == ['attn_adapter', 'tch_model', 'decoder_*', 'mask_token']
    mae = _mae()
    report = ck.load_pretrained(mae, obj, use='mae_teacher')  # the student as a GD teacher
    assert _equal_to(mae, student)
    assert report.dropped == ['attn_adapter', 'tch_model']


def test_mae_lite_finetuned_checkpoint():
    ft = _rand(_vit(num_classes=5, global_pool='avg').state_dict())
    sd = {'model.' + k: v for k, v in ft.items()}
    model = _vit(num_classes=5, global_pool='avg')
    ck.load_pretrained(model, {'model': sd}, use='encoder_teacher')
    assert _equal_to(model, ft)


def test_tinymim_pretrain_checkpoint_as_student_and_teacher(tmp_path):
    """TinyMIM-PT-*: MAE encoder keys under 'model' (+ optimizer, scaler, args)."""
    enc = _rand(_vit().state_dict())
    path = str(tmp_path / 'TinyMIM-PT-T.pth')
    args = argparse.Namespace(model='tinymim_vit_tiny_patch16', teacher_model='mae_vit_base')
    torch.save({'model': enc, 'optimizer': {}, 'epoch': 299, 'scaler': {}, 'args': args}, path)
    for use in ('backbone', 'encoder_teacher'):
        model = _vit(last_block_heads=4)
        report = ck.load_pretrained(model, path, use=use)
        assert report.fmt == 'mae_encoder'
        assert _equal_to(model, enc)


def test_tinymim_star_distilled_checkpoint():
    """TinyMIM*-T / DeiT distilled: dist_token second, its slot inside pos_embed (1, 2+N, C)."""
    vit = _rand(_vit(num_classes=5).state_dict())
    pe = torch.randn(1, 18, 32)
    sd = {**vit, 'pos_embed': pe, 'dist_token': torch.randn(1, 1, 32)}
    sd['head_dist.weight'], sd['head_dist.bias'] = torch.randn(5, 32), torch.randn(5)
    assert ck.detect_format(sd) == 'deit_distilled'
    model = _vit(num_classes=5)
    report = ck.load_pretrained(model, {'model': sd}, use='backbone')
    expected = {k: vit[k] for k in ENCODER_KEYS if k != 'pos_embed'}
    assert _equal_to(model, expected)
    assert torch.equal(model.pos_embed[:, :1], pe[:, :1])
    assert torch.equal(model.pos_embed[:, 1:], pe[:, 2:])
    assert report.dropped == ['dist_token']


# ------------------------------------------------------------------ source, dtypes, logs
def test_in_memory_source_names():
    bad = {'patch_embed.proj.weight': torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        ck.load_pretrained(_vit(), bad, use='backbone')
    assert 'in-memory state dict' in str(info.value) and 'tensor(' not in str(info.value)
    with pytest.raises(CheckpointError, match='^teacher.pth does not fit'):
        ck.load_pretrained(_vit(), bad, use='backbone', source='teacher.pth')


@pytest.mark.parametrize('dtype', [torch.int64, torch.bool])
def test_integer_tensors_for_float_parameters_are_refused(dtype):
    sd = _rand(_vit().state_dict())
    sd['blocks.0.attn.qkv.weight'] = sd['blocks.0.attn.qkv.weight'].to(dtype)
    sd['norm.bias'] = sd['norm.bias'].to(dtype)
    with pytest.raises(CheckpointError) as info:
        ck.load_pretrained(_vit(), sd, use='backbone')
    msg = str(info.value)
    assert f'blocks.0.attn.qkv.weight: checkpoint {dtype} vs model torch.float32' in msg
    assert 'norm.bias' in msg and '(2)' in msg


def test_half_precision_is_cast_and_listed():
    sd = _rand(_vit().state_dict())
    half = {k: v.half() if k.startswith('blocks.0.') else v.bfloat16() for k, v in sd.items()}
    model = _vit()
    report = ck.load_pretrained(model, half, use='backbone')
    assert sorted(report.cast) == ENCODER_KEYS
    assert model.blocks[0].norm1.weight.dtype == torch.float32
    assert torch.equal(model.norm.weight, sd['norm.weight'].bfloat16().float())
    assert f'cast: {len(ENCODER_KEYS)}:' in report.summary()


def test_summary_reaches_the_current_mmengine_logger(tmp_path):
    from mmengine.logging import MMLogger

    log_file = str(tmp_path / 'train.log')
    mm_logger = MMLogger.get_instance('g2sd-test-ckpt-log', log_file=log_file, log_level='INFO')
    try:
        ck.load_pretrained(_vit(), _rand(_vit().state_dict()), use='backbone', source='t.pth')
    finally:
        for h in mm_logger.handlers:
            h.flush()
        MMLogger._instance_dict.pop('g2sd-test-ckpt-log')
    with open(log_file) as f:
        text = f.read()
    assert (
        'loaded 30 tensors into VisionTransformer (backbone) from t.pth (format mae_encoder)'
        in text
    )


# ------------------------------------------------------------------ rel-pos tables
class _RelPos(nn.Module):
    def __init__(self, length: int) -> None:
        super().__init__()
        self.rel_pos_h = nn.Parameter(torch.zeros(length, 4))
        self.rel_pos_w = nn.Parameter(torch.zeros(length, 4))


def test_rel_pos_tables_are_resampled():
    h = torch.arange(12.0).reshape(3, 4)
    model = _RelPos(5)
    report = ck.load_state_dict_strict(model, {'rel_pos_h': h, 'rel_pos_w': h})
    assert sorted(report.resampled) == ['rel_pos_h', 'rel_pos_w']
    # linear, align_corners=False, 3 -> 5 rows: source row (i + 0.5) * 3 / 5 - 0.5, clamped
    # to [0, 2] = [0, 0.4, 1, 1.6, 2]; column 0 of the table is 4 * row.
    col = model.rel_pos_h.detach()[:, 0]
    expected = torch.tensor([0.0, 1.6, 4.0, 6.4, 8.0])
    assert torch.allclose(col, expected)
    with pytest.raises(CheckpointError, match='rel_pos_h: checkpoint'):
        ck.load_state_dict_strict(_RelPos(5), {'rel_pos_h': h, 'rel_pos_w': h}, resample=False)


# ------------------------------------------------------------------ gadgets
def _gadgets(marker: str) -> list[object]:
    class System:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    class Eval:
        def __reduce__(self):
            return (builtins.eval, (f"__import__('os').system('touch {marker}')",))

    return [System(), Eval()]


@pytest.mark.parametrize('legacy', [False, True])
def test_gadget_pickles_are_refused_and_named(tmp_path, legacy):
    marker = str(tmp_path / 'MARKER')
    for gadget, name in zip(_gadgets(marker), (f'{os.name}.system', 'builtins.eval')):
        path = str(tmp_path / 'evil.pth')
        obj = {'model': _vit().state_dict(), 'x': gadget}
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        for trusted in (False, True):
            with pytest.raises(CheckpointError) as info:
                ck.load_file(path, trusted=trusted)
            msg = str(info.value)
            assert name in msg and 'refused for safety' in msg
            assert 'weights_only=False' not in msg and 'corrupt' not in msg
            with pytest.raises(CheckpointError):
                ck.load_pretrained(_vit(), path, use='backbone', trusted=trusted)
    assert not os.path.exists(marker)


def test_torch_advice_is_never_repeated(tmp_path, caplog):
    path = tmp_path / 'bad.pth'
    path.write_bytes(b'\x80\x02}q\x00.' + b'garbage')
    with caplog.at_level(logging.INFO), pytest.raises(CheckpointError) as info:
        ck.load_file(path)
    assert 'weights_only=False' not in str(info.value)
