"""Tests of the timm registration (g2sd/models/timm_models.py)."""

from __future__ import annotations

import pytest
import timm
import torch

from g2sd import checkpoint as ck
from g2sd.checkpoint import CheckpointError
from g2sd.models import timm_models
from g2sd.models.mae import MaskedAutoencoderViT
from g2sd.models.vit import VisionTransformer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
NAMES = ['g2sd_vit_base_patch16_224', 'g2sd_vit_small_patch16_224', 'g2sd_vit_tiny_patch16_224']


def test_only_g2sd_names_are_registered():
    """Importing g2sd (core and g2sd.cls) adds only g2sd_-prefixed timm names."""
    import ast
    import subprocess
    import sys

    code = (
        'import timm; before = set(timm.list_models()); '
        'import g2sd.models, g2sd.cls; added = set(timm.list_models()) - before; '
        'print(sorted(added))'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    added = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert set(NAMES) <= set(added)
    assert all(name.startswith('g2sd_') for name in added), added
    # timm's own ViTs are untouched
    entry = timm.models.model_entrypoint('vit_small_patch16_224')
    assert entry.__module__ == 'timm.models.vision_transformer'


@pytest.mark.parametrize(
    'name, dims', [(NAMES[2], (192, 12, 3)), (NAMES[1], (384, 12, 6)), (NAMES[0], (768, 12, 12))]
)
def test_architectures_and_default_cfg(name, dims):
    model = timm.create_model(name, img_size=32)  # small input keeps it fast
    assert isinstance(model, VisionTransformer)
    assert (model.embed_dim, model.depth, model.num_heads) == dims
    cfg = model.pretrained_cfg
    assert cfg['tag'] == 'gd_in1k' and cfg['num_classes'] == 0 and model.num_classes == 0
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['interpolation'] == 'bicubic'
    assert cfg['crop_pct'] == 0.9 and cfg['first_conv'] == 'patch_embed.proj'
    assert cfg['classifier'] == 'head' and not cfg.get('url') and not cfg.get('hf_hub_id')
    sd_cfg = timm.models.get_pretrained_cfg(f'{name}.gd_sd_in1k')
    assert sd_cfg.num_classes == 1000


@pytest.fixture
def source() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(
        **TINY, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    ).eval()


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_create_model_from_file_matches_source(tmp_path, source, suffix):
    path = str(tmp_path / f'student{suffix}')
    ck.save_state_dict(ck.to_encoder_state_dict(source.state_dict()), path, meta={'k': 'v'})
    model = timm.create_model(
        'g2sd_vit_small_patch16_224',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=path),
        **TINY,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source.forward_features(x))
        assert model(x).shape == (2, 32)  # gd_in1k: no head, pooled features


def test_create_model_with_new_head_and_other_formats(tmp_path, source):
    path = str(tmp_path / 'mae_full.pth')
    torch.save({'model': source.state_dict()}, path)  # MAE full file: decoder dropped
    model = timm.create_model(
        'g2sd_vit_tiny_patch16_224',
        pretrained=True,
        num_classes=5,
        pretrained_cfg_overlay=dict(file=path),
        **TINY,
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source.forward_features(x))
    assert model(x).shape == (1, 5)
    # same number of classes as the source head: the head is loaded
    head_src = VisionTransformer(**TINY, num_classes=1000)
    hp = str(tmp_path / 'timm.safetensors')
    ck.save_state_dict(head_src.state_dict(), hp)
    m2 = timm_models.create_model('g2sd_vit_tiny_patch16_224.gd_sd_in1k', file=hp, **TINY)
    assert torch.equal(m2.head.weight, head_src.head.weight)


def test_global_pool_and_resampled_grid(tmp_path, source):
    path = str(tmp_path / 'student.safetensors')
    ck.save_state_dict(ck.to_encoder_state_dict(source.state_dict()), path)
    model = timm_models.create_model(
        'g2sd_vit_tiny_patch16_224',
        file=path,
        num_classes=3,
        global_pool='avg',
        **{**TINY, 'img_size': 48},
    )
    assert model.pos_embed.shape == (1, 37, 32) and model.fc_norm.weight.shape == (32,)


def test_bad_file_gives_checkpoint_error(tmp_path, source):
    path = str(tmp_path / 'wrong.pth')
    ck.save_state_dict(ck.to_encoder_state_dict(source.state_dict()), path)
    with pytest.raises(
        CheckpointError, match=r'shape mismatches.*checkpoint \(32,\) vs model \(64,\)'
    ):
        timm.create_model(
            'g2sd_vit_tiny_patch16_224',
            pretrained=True,
            pretrained_cfg_overlay=dict(file=path),
            **{**TINY, 'embed_dim': 64},
        )
