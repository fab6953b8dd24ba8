"""Segmentation backbone (g2sd.SegViTBackbone) and BEiT bias-table resampling.

The block reference below is an independent, functional transcription of BEiT's
``Attention`` with relative position bias and ``Block`` with layer scale (Bao et al., ICLR
2022; ``unilm/beit/semantic_segmentation/backbone/beit.py``, the backbone of the official
G2SD seg code ``G2SD_seg_dis/src/backbone/mae.py``; G2SD: Huang et al., CVPR 2023). The
table resampling is checked against mmseg's own ``BEiT._geometric_sequence_interpolation``
(the official code path) with ``scipy.interpolate.interp2d`` (removed in SciPy 1.14) replaced
by a shim, and against the exact reproduction of cubic polynomials by a bicubic spline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import interpolate
from seg_tiny import tiny_backbone  # tests/ is on sys.path (no package)

import g2sd.seg  # noqa: F401  (registers g2sd.SegViTBackbone)
from g2sd.checkpoint import CheckpointError, load_pretrained, loading
from g2sd.layers import resample_rel_pos_bias_table
from g2sd.models.vit import VisionTransformer
from g2sd.registry import MODELS
from g2sd.seg.backbone import SegViTBackbone

EMBED, DEPTH, HEADS, PATCH = 32, 4, 2, 4


def build(**overrides) -> SegViTBackbone:
    model = MODELS.build(tiny_backbone(**overrides))
    assert isinstance(model, SegViTBackbone)
    return model.eval()


def randomize_(model: SegViTBackbone, seed: int = 0) -> SegViTBackbone:
    """Non-trivial bias tables, layer scales and biases (so each term matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'relative_position_bias_table' in name or name.endswith(('gamma_1', 'gamma_2')):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if 'gamma' in name else 0))
            elif name.endswith('bias') or 'norm' in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------------------
# BEiT reference (functional transcription)
# ----------------------------------------------------------------------------------------
def beit_relative_position_index(window_size):
    wh, ww = window_size
    num_relative_distance = (2 * wh - 1) * (2 * ww - 1) + 3
    coords_h = torch.arange(wh)
    coords_w = torch.arange(ww)
    coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing='ij'))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += wh - 1
    relative_coords[:, :, 1] += ww - 1
    relative_coords[:, :, 0] *= 2 * ww - 1
    index = torch.zeros(size=(wh * ww + 1,) * 2, dtype=relative_coords.dtype)
    index[1:, 1:] = relative_coords.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


def beit_block(x, w, prefix, num_heads, window_size):
    """One BEiT block (eval): x + gamma_1 * attn(norm1(x)); x + gamma_2 * mlp(norm2(x))."""
    b, n, c = x.shape
    y = F.layer_norm(x, (c,), w[prefix + 'norm1.weight'], w[prefix + 'norm1.bias'], 1e-6)
    qkv = F.linear(y, w[prefix + 'attn.qkv.weight'], w[prefix + 'attn.qkv.bias'])
    qkv = qkv.reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // num_heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    table = w.get(prefix + 'attn.relative_position_bias_table')
    if table is not None:
        index = beit_relative_position_index(window_size)
        bias = table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
    attn = attn.softmax(dim=-1)
    a = (attn @ v).transpose(1, 2).reshape(b, n, c)
    a = F.linear(a, w[prefix + 'attn.proj.weight'], w[prefix + 'attn.proj.bias'])
    x = x + w.get(prefix + 'gamma_1', 1.0) * a
    y = F.layer_norm(x, (c,), w[prefix + 'norm2.weight'], w[prefix + 'norm2.bias'], 1e-6)
    y = F.linear(y, w[prefix + 'mlp.fc1.weight'], w[prefix + 'mlp.fc1.bias'])
    y = F.linear(F.gelu(y), w[prefix + 'mlp.fc2.weight'], w[prefix + 'mlp.fc2.bias'])
    return x + w.get(prefix + 'gamma_2', 1.0) * y


def beit_features(img, w, out_indices, depth=DEPTH, num_heads=HEADS, patch=PATCH):
    """BEiT / official mae.py features: x[:, 1:] of the chosen blocks as (B, C, Hp, Wp)."""
    x = F.conv2d(img, w['patch_embed.proj.weight'], w['patch_embed.proj.bias'], stride=patch)
    b, c, hp, wp = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w['cls_token'].expand(b, -1, -1), x], dim=1) + w['pos_embed']
    feats = {}
    for i in range(depth):
        x = beit_block(x, w, f'blocks.{i}.', num_heads, (hp, wp))
        feats[i] = x[:, 1:].permute(0, 2, 1).reshape(b, c, hp, wp)
    return [feats[i] for i in out_indices]


# ----------------------------------------------------------------------------------------
# (a) forward
# ----------------------------------------------------------------------------------------
def test_forward_shapes_and_order():
    model = randomize_(build())
    img = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outs = model(img)
    assert isinstance(outs, tuple) and len(outs) == 4
    assert all(o.shape == (2, EMBED, 8, 8) for o in outs)
    picked = build(out_indices=(3, 1))
    picked.load_state_dict(model.state_dict())
    with torch.no_grad():
        two = picked(img)
    assert len(two) == 2
    torch.testing.assert_close(two[0], outs[3])
    torch.testing.assert_close(two[1], outs[1])


def test_non_square_grid():
    model = randomize_(build(img_size=(32, 48)))
    assert model.blocks[0].attn.relative_position_bias_table.shape == (15 * 23 + 3, HEADS)
    img = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        outs = model(img)
    assert [tuple(o.shape) for o in outs] == [(2, EMBED, 8, 12)] * 4
    ref = beit_features(img, dict(model.state_dict()), (0, 1, 2, 3))
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-4)
    # The same token count on the transposed grid would read the bias of another grid.
    with pytest.raises(ValueError, match='12x8 patch grid'):
        model(torch.randn(1, 1, 48, 32))


def test_class_token_dropped_against_beit_reference():
    model = randomize_(build())
    sd = dict(model.state_dict())
    assert torch.count_nonzero(sd['blocks.2.attn.relative_position_bias_table']) > 0
    img = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outs = model(img)
    ref = beit_features(img, sd, (0, 1, 2, 3))
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-4)


def test_zero_bias_tables_give_the_plain_vit():
    with_bias = randomize_(build())
    plain = build(use_rel_pos_bias=False)
    sd = with_bias.state_dict()
    with torch.no_grad():
        for name, p in with_bias.named_parameters():
            if 'relative_position_bias_table' in name:
                p.zero_()
    plain.load_state_dict({k: v for k, v in sd.items() if 'relative_position' not in k})
    assert not any('relative_position' in k for k in plain.state_dict())
    img = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a, b = with_bias(img), plain(img)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # and a non-zero table does change the output
        with_bias.blocks[0].attn.relative_position_bias_table.normal_()
        c = with_bias(img)
    assert (c[3] - b[3]).abs().max() > 1e-3


def test_layer_scale_and_defaults():
    model = build()
    for blk in model.blocks:
        for g in (blk.gamma_1, blk.gamma_2):
            assert g.shape == (EMBED,)
            assert torch.equal(g.detach(), torch.ones(EMBED))
        assert torch.count_nonzero(blk.attn.relative_position_bias_table) == 0
        assert blk.attn.relative_position_bias_table.shape == (15 * 15 + 3, HEADS)
    keys = set(model.state_dict())
    assert 'cls_token' in keys and 'blocks.0.gamma_1' in keys
    assert not any(k.startswith(('norm.', 'head.', 'fc_norm.')) for k in keys)
    assert not any('relative_position_index' in k for k in keys)  # derived buffer
    assert model.pos_embed.shape == (1, 1 + 64, EMBED) and model.pos_embed.requires_grad
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    tenth = build(init_values=0.1)
    assert torch.allclose(tenth.blocks[1].gamma_2.detach(), torch.full((EMBED,), 0.1))
    none = build(init_values=None)
    assert none.blocks[0].gamma_1 is None and 'blocks.0.gamma_1' not in none.state_dict()


@pytest.mark.parametrize(
    'bad',
    [(), (4,), (-1,), (0, 9), (1.0,), (True,), 3, 'abc'],
)
def test_bad_out_indices(bad):
    with pytest.raises(ValueError, match='out_indices'):
        build(out_indices=bad)


def test_forced_options():
    with pytest.raises(ValueError, match='class_token'):
        build(class_token=False)
    with pytest.raises(ValueError, match='final_norm'):
        build(final_norm=True)
    build(qkv_bias=True)  # the forced value itself is fine


def test_layer_depth():
    model = build()
    assert model.get_layer_depth('pos_embed') == (0, DEPTH + 2)
    assert model.get_layer_depth('cls_token')[0] == 0
    assert model.get_layer_depth('patch_embed.proj.weight')[0] == 0
    for k in range(DEPTH):
        assert model.get_layer_depth(f'blocks.{k}.attn.qkv.weight')[0] == k + 1
        assert model.get_layer_depth(f'blocks.{k}.gamma_1')[0] == k + 1
        assert model.get_layer_depth(f'blocks.{k}.attn.relative_position_bias_table')[0] == k + 1


# ----------------------------------------------------------------------------------------
# (b) bias table resampling
# ----------------------------------------------------------------------------------------
class _Interp2dShim:
    """``interp2d(x, y, z, kind='cubic')`` on a regular grid, for mmseg's code path."""

    def __init__(self, x, y, z, kind='linear'):
        assert kind == 'cubic'
        z = np.asarray(z)
        assert z.shape == (len(y), len(x))
        self.spline = interpolate.RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)

    def __call__(self, x, y):
        return self.spline(x, y).T


def mmseg_resample(table, src_grid, dst_grid, monkeypatch):
    from mmseg.models.backbones import beit as mmseg_beit

    monkeypatch.setattr(mmseg_beit.interpolate, 'interp2d', _Interp2dShim, raising=False)
    heads = table.shape[1]
    new = mmseg_beit.BEiT._geometric_sequence_interpolation(
        None, 2 * src_grid - 1, 2 * dst_grid - 1, table[:-3], heads
    )
    return torch.cat([new, table[-3:]], dim=0)


@pytest.mark.parametrize('src,dst', [(4, 7), (7, 4)])
def test_resample_equals_mmseg(src, dst, monkeypatch):
    torch.manual_seed(src * 10 + dst)
    table = torch.randn((2 * src - 1) ** 2 + 3, 3)
    out = resample_rel_pos_bias_table(table, (dst, dst))
    assert out.shape == ((2 * dst - 1) ** 2 + 3, 3) and out.dtype == table.dtype
    torch.testing.assert_close(out, mmseg_resample(table, src, dst, monkeypatch))
    assert torch.equal(out[-3:], table[-3:])
    # centre offset (0, 0) kept: row (W - 1)(2W - 1) + (W - 1)
    c_src, c_dst = (src - 1) * (2 * src), (dst - 1) * (2 * dst)
    torch.testing.assert_close(out[c_dst], table[c_src], atol=1e-5, rtol=1e-5)


def _geometric(src_side, dst_side):
    """BEiT's source offsets (transcribed from the official loop)."""
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if (1.0 - q ** (src_side // 2)) / (1.0 - q) > dst_side // 2:
            hi = q
        else:
            lo = q
    d, cur = [], 1.0
    for i in range(src_side // 2):
        d.append(cur)
        cur += q ** (i + 1)
    return np.array([-v for v in reversed(d)] + [0.0] + d)


def test_resample_same_grid_is_identity():
    table = torch.randn(84, 2)
    assert resample_rel_pos_bias_table(table, (5, 5)) is table
    assert resample_rel_pos_bias_table(table, 5) is table


@pytest.mark.parametrize('src,dst', [(4, 7), (7, 4)])
def test_resample_reproduces_cubic_polynomials(src, dst):
    """A bicubic interpolating spline is exact on cubics: checks the axes' orientation."""

    def poly(dh, dw):  # not symmetric in (dh, dw)
        return 0.3 + 0.5 * dw - 0.2 * dh + 0.05 * dw**2 * dh - 0.01 * dh**3 + 0.02 * dw**3

    pos = _geometric(2 * src - 1, 2 * dst - 1)
    dh, dw = np.meshgrid(pos, pos, indexing='ij')
    col = torch.tensor(poly(dh, dw).reshape(-1), dtype=torch.float64)
    table = torch.cat([torch.stack([col, 2 * col], 1), torch.tensor([[1.0, 2], [3, 4], [5, 6]])])
    out = resample_rel_pos_bias_table(table, dst)
    read = np.clip(np.arange(-(dst - 1), dst, dtype=np.float64), pos[0], pos[-1])  # clamped
    eh, ew = np.meshgrid(read, read, indexing='ij')
    expect = torch.tensor(poly(eh, ew).reshape(-1))
    torch.testing.assert_close(out[:-3, 0].double(), expect, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out[:-3, 1].double(), 2 * expect, atol=4e-5, rtol=1e-5)
    assert torch.equal(out[-3:], table[-3:])


def test_resample_non_square_keeps_the_unchanged_axis():
    torch.manual_seed(3)
    table = torch.randn(7 * 7 + 3, 2)
    out = resample_rel_pos_bias_table(table, (4, 6))  # rows keep 2*4-1 = 7 offsets
    assert out.shape == (7 * 11 + 3, 2)
    pos = _geometric(7, 11)
    read = np.clip(np.arange(-5.0, 6.0), pos[0], pos[-1])
    for head in range(2):
        z = table[:-3, head].view(7, 7).double().numpy()
        got = out[:-3, head].view(7, 11).double()
        for r in range(7):  # each row: the 1-D not-a-knot cubic interpolant along dw
            spline = interpolate.make_interp_spline(pos, z[r], k=3)
            torch.testing.assert_close(got[r], torch.from_numpy(spline(read)), atol=1e-5, rtol=1e-5)


def test_resample_rejects_bad_tables():
    with pytest.raises(ValueError, match=r'\(50, 2\)'):
        resample_rel_pos_bias_table(torch.zeros(50, 2), (4, 4))
    with pytest.raises(ValueError, match='too small'):
        resample_rel_pos_bias_table(torch.zeros(9 + 3, 2), (4, 4))
    with pytest.raises(ValueError, match='shape'):
        resample_rel_pos_bias_table(torch.zeros(52), (4, 4))


# ----------------------------------------------------------------------------------------
# (c) pretrained loading
# ----------------------------------------------------------------------------------------
def mae_checkpoint() -> dict[str, torch.Tensor]:
    """An MAE-style encoder at 28 px / patch 4 (7x7 grid, class token, final norm) + decoder."""
    enc = VisionTransformer(
        img_size=28, patch_size=PATCH, in_chans=1, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS
    )
    sd = {k: v.clone() for k, v in enc.state_dict().items() if not k.startswith('head.')}
    sd['pos_embed'] = torch.randn_like(sd['pos_embed'])
    sd['blocks.1.attn.qkv.weight'] = torch.randn_like(sd['blocks.1.attn.qkv.weight'])
    sd['mask_token'] = torch.zeros(1, 1, 16)
    sd['decoder_embed.weight'] = torch.randn(16, EMBED)
    sd['decoder_pos_embed'] = torch.zeros(1, 50, 16)
    return sd


def test_mae_checkpoint_loads(tmp_path, monkeypatch):
    sd = mae_checkpoint()
    path = tmp_path / 'mae.pth'
    torch.save({'model': sd}, path)
    logged = []
    monkeypatch.setattr(loading, '_log', logged.append)  # the loader's one report
    model = build(img_size=48, pretrained=str(path))
    assert logged == []  # nothing is loaded while building
    model.init_weights()
    assert len(logged) == 1 and 'pos_embed' in logged[0]
    state = model.state_dict()
    pe = sd['pos_embed']
    grid = pe[:, 1:].reshape(1, 7, 7, EMBED).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(12, 12), mode='bicubic', align_corners=False)
    expect = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 144, EMBED)], dim=1)
    torch.testing.assert_close(state['pos_embed'], expect)
    torch.testing.assert_close(state['blocks.1.attn.qkv.weight'], sd['blocks.1.attn.qkv.weight'])
    torch.testing.assert_close(state['cls_token'], sd['cls_token'])
    for k, v in state.items():
        if 'relative_position_bias_table' in k:
            assert torch.count_nonzero(v) == 0, k
        if k.endswith(('gamma_1', 'gamma_2')):
            assert torch.equal(v, torch.ones(EMBED)), k

    report = load_pretrained(build(img_size=48), str(path), use='backbone')
    assert report.resampled == ['pos_embed']
    tables = [f'blocks.{i}.attn.relative_position_bias_table' for i in range(DEPTH)]
    gammas = [f'blocks.{i}.gamma_{j}' for i in range(DEPTH) for j in (1, 2)]
    assert sorted(report.missing_allowed) == sorted(tables + gammas)
    assert set(report.unexpected_ignored) == {'norm.weight', 'norm.bias'}
    assert 'decoder_*' in report.dropped and 'mask_token' in report.dropped


def _bias_checkpoint(heads: int = HEADS) -> tuple[dict[str, torch.Tensor], SegViTBackbone]:
    """A trained seg backbone at 16 px (grid 4), with mmseg-style index buffers in the file."""
    src = randomize_(build(img_size=16, num_heads=heads), seed=7)
    sd = dict(src.state_dict())
    for i in range(DEPTH):
        sd[f'blocks.{i}.attn.relative_position_index'] = src.blocks[i].attn.relative_position_index
    return sd, src


def test_bias_tables_are_resampled_on_load(tmp_path):
    sd, _ = _bias_checkpoint()
    path = tmp_path / 'seg4.pth'
    torch.save({'state_dict': sd}, path)
    model = build(pretrained=str(path))  # grid 8
    report = load_pretrained(model, str(path), use='backbone')
    tables = [f'blocks.{i}.attn.relative_position_bias_table' for i in range(DEPTH)]
    assert sorted(report.resampled) == sorted(['pos_embed', *tables])
    assert report.missing_allowed == []
    assert sorted(report.unexpected_ignored) == sorted(
        f'blocks.{i}.attn.relative_position_index' for i in range(DEPTH)
    )
    state = model.state_dict()
    for key in tables:
        old, new = sd[key], state[key]
        assert new.shape == (15 * 15 + 3, HEADS)
        torch.testing.assert_close(new, resample_rel_pos_bias_table(old, (8, 8)))
        torch.testing.assert_close(new[7 * 15 + 7], old[3 * 7 + 3], atol=1e-5, rtol=1e-5)
        assert torch.equal(new[-3:], old[-3:])
    for key in ('blocks.2.gamma_1', 'blocks.3.gamma_2', 'blocks.0.attn.qkv.bias'):
        torch.testing.assert_close(state[key], sd[key])
    model.init_weights()  # the config path: the same load
    torch.testing.assert_close(model.state_dict()[tables[1]], state[tables[1]])


def test_trained_tables_that_do_not_fit_fail(tmp_path):
    sd, _ = _bias_checkpoint(heads=4)  # 4 heads: same qkv shapes, other bias tables
    path = tmp_path / 'seg4h.pth'
    torch.save({'state_dict': sd}, path)
    with pytest.raises(CheckpointError, match='relative_position_bias_table'):
        build(pretrained=str(path)).init_weights()
