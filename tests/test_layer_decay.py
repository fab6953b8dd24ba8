"""Layer-wise lr decay: group table of a tiny ViT equals a hand-written literal table."""

from __future__ import annotations

import pytest
import torch
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from g2sd.models.vit import VisionTransformer
from g2sd.optim import find_layer_depth_module, layer_decay_param_groups

R = 0.75
WD = 0.05
# depth 2 -> layer ids: embeddings 0, blocks.0 -> 1, blocks.1 -> 2, rest 3; num_layers 4.
# name: (lr scale, weight decay)
EXPECTED = {
    'cls_token': (R**3, 0.0),
    'pos_embed': (R**3, 0.0),
    'patch_embed.proj.weight': (R**3, WD),
    'patch_embed.proj.bias': (R**3, 0.0),
    'blocks.0.norm1.weight': (R**2, 0.0),
    'blocks.0.norm1.bias': (R**2, 0.0),
    'blocks.0.attn.qkv.weight': (R**2, WD),
    'blocks.0.attn.qkv.bias': (R**2, 0.0),
    'blocks.0.attn.proj.weight': (R**2, WD),
    'blocks.0.attn.proj.bias': (R**2, 0.0),
    'blocks.0.norm2.weight': (R**2, 0.0),
    'blocks.0.norm2.bias': (R**2, 0.0),
    'blocks.0.mlp.fc1.weight': (R**2, WD),
    'blocks.0.mlp.fc1.bias': (R**2, 0.0),
    'blocks.0.mlp.fc2.weight': (R**2, WD),
    'blocks.0.mlp.fc2.bias': (R**2, 0.0),
    'blocks.1.norm1.weight': (R, 0.0),
    'blocks.1.norm1.bias': (R, 0.0),
    'blocks.1.attn.qkv.weight': (R, WD),
    'blocks.1.attn.qkv.bias': (R, 0.0),
    'blocks.1.attn.proj.weight': (R, WD),
    'blocks.1.attn.proj.bias': (R, 0.0),
    'blocks.1.norm2.weight': (R, 0.0),
    'blocks.1.norm2.bias': (R, 0.0),
    'blocks.1.mlp.fc1.weight': (R, WD),
    'blocks.1.mlp.fc1.bias': (R, 0.0),
    'blocks.1.mlp.fc2.weight': (R, WD),
    'blocks.1.mlp.fc2.bias': (R, 0.0),
    'norm.weight': (1.0, 0.0),
    'norm.bias': (1.0, 0.0),
    'head.weight': (1.0, WD),
    'head.bias': (1.0, 0.0),
}


def tiny_vit() -> VisionTransformer:
    return VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2
    )


def table(groups: list[dict], prefix: str = '') -> dict[str, tuple[float, float]]:
    out = {}
    for g in groups:
        for name in g['names']:
            assert name not in out, f'{name} in two groups'
            out[name[len(prefix) :] if name.startswith(prefix) else name] = (
                g['lr_scale'],
                g['weight_decay'],
            )
            assert g['lr'] == pytest.approx(1e-3 * g['lr_scale'])
    return out


def test_tiny_vit_table_literal():
    groups = layer_decay_param_groups(tiny_vit(), base_lr=1e-3, weight_decay=WD, layer_decay_rate=R)
    got = table(groups)
    assert sorted(got) == sorted(EXPECTED)
    for name, (scale, wd) in EXPECTED.items():
        assert got[name][0] == pytest.approx(scale), name
        assert got[name][1] == wd, name
    assert [g['layer_id'] for g in groups] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [g['group_name'] for g in groups][:2] == ['layer_0_decay', 'layer_0_no_decay']


class Neck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)


class Wrapped(nn.Module):
    """model -> .module (DDP-like) -> .student -> .backbone (ViT), plus a neck outside."""

    def __init__(self) -> None:
        super().__init__()
        inner = nn.Module()
        inner.student = nn.Module()
        inner.student.backbone = tiny_vit()
        inner.student.neck = Neck()
        self.module = inner


def test_walk_through_wrappers_and_outside_params():
    model = Wrapped()
    backbone, prefix = find_layer_depth_module(model)
    assert backbone is model.module.student.backbone
    assert prefix == 'module.student.backbone.'
    model.module.student.backbone.blocks[0].requires_grad_(False)  # frozen -> excluded
    groups = layer_decay_param_groups(
        model,
        base_lr=1e-3,
        weight_decay=WD,
        layer_decay_rate=R,
        no_weight_decay=('neck.proj.weight',),
    )
    got = table(groups, prefix='module.student.backbone.')
    assert not [n for n in got if n.startswith('blocks.0.')]
    assert got['module.student.neck.proj.weight'] == (1.0, 0.0)  # outside: scale 1, no wd
    assert got['module.student.neck.proj.bias'] == (1.0, 0.0)
    assert got['cls_token'] == (pytest.approx(R**3), 0.0)  # ViT.no_weight_decay() honoured
    assert got['head.weight'] == (1.0, WD)


def test_custom_keys_multiply_lr_and_decay():
    groups = layer_decay_param_groups(
        tiny_vit(),
        base_lr=1.0,
        weight_decay=WD,
        layer_decay_rate=R,
        custom_keys={'head': dict(lr_mult=10.0), 'head.weight': dict(decay_mult=0.5)},
    )
    by_name = {n: g for g in groups for n in g['names']}
    assert by_name['head.weight']['lr'] == 1.0  # longest key wins: decay_mult only
    assert by_name['head.weight']['weight_decay'] == pytest.approx(WD * 0.5)
    assert by_name['head.bias']['lr'] == 10.0


def test_bad_arguments():
    with pytest.raises(ValueError, match='layer_decay_rate'):
        layer_decay_param_groups(tiny_vit(), base_lr=1.0, weight_decay=0.0, layer_decay_rate=0)
    with pytest.raises(TypeError, match='get_layer_depth'):
        layer_decay_param_groups(
            nn.Sequential(nn.Linear(2, 2)), base_lr=1.0, weight_decay=0.0, layer_decay_rate=0.5
        )
    with pytest.raises(TypeError, match='custom_keys'):
        layer_decay_param_groups(
            tiny_vit(), base_lr=1.0, weight_decay=0.0, layer_decay_rate=0.5, custom_keys={'a': 1}
        )


def build_constructor(paramwise_cfg: dict):
    return OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type='g2sd.LayerDecayOptimWrapperConstructor',
            optim_wrapper_cfg=dict(
                type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=WD)
            ),
            paramwise_cfg=paramwise_cfg,
        )
    )


def test_constructor_builds_optimizer_with_literal_lrs():
    wrapper = build_constructor(dict(layer_decay_rate=R))(tiny_vit())
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)
    lrs = {
        n: (g['lr'], g['weight_decay']) for g in wrapper.optimizer.param_groups for n in g['names']
    }
    for name, (scale, wd) in EXPECTED.items():
        assert lrs[name][0] == pytest.approx(1e-3 * scale), name
        assert lrs[name][1] == wd, name


def test_constructor_rejects_bad_paramwise_cfg():
    with pytest.raises(ValueError, match='layer_decay_rate'):
        build_constructor(dict(no_weight_decay=('x',)))
    with pytest.raises(ValueError, match='num_layers'):
        build_constructor(dict(layer_decay_rate=R, num_layers=12))
