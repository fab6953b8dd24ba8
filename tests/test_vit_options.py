"""Options of the one ViT for det / seg: windows, decomposed rel-pos, BEiT bias, layer scale.

Every expectation is a literal or an explicit computation written here (attention as
softmax((q * scale) k^T + bias) v with the bias built entry by entry), never the code
under test.
"""

from __future__ import annotations

import pytest
import timm
import torch

from g2sd.layers import (
    get_rel_pos,
    relative_position_index,
    resample_rel_pos,
    window_partition,
    window_unpartition,
)
from g2sd.models import VisionTransformer
from g2sd.models.vit import Attention, Block
from g2sd.optim import layer_decay_param_groups

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
VITDET = dict(
    TINY,
    num_classes=0,
    global_pool='',
    class_token=False,
    window_size=2,
    global_attn_indexes=(1, 3),
    use_rel_pos=True,
    final_norm=False,
)


# ----------------------------------------------------------------- low layer (literals)
def test_resample_rel_pos_literal_linear_interpolation() -> None:
    table = torch.tensor([[0.0], [2.0], [4.0]])
    # align_corners=False: source positions -0.2, 0.4, 1.0, 1.6, 2.2 (clamped at the ends)
    expected = torch.tensor([[0.0], [0.8], [2.0], [3.2], [4.0]])
    torch.testing.assert_close(resample_rel_pos(table, 5), expected)
    assert resample_rel_pos(table, 3) is table
    with pytest.raises(ValueError, match='rel_pos must be'):
        resample_rel_pos(torch.zeros(3), 5)
    with pytest.raises(ValueError, match='new_len'):
        resample_rel_pos(table, 0)


def test_get_rel_pos_literal() -> None:
    table = torch.tensor([[10.0], [11.0], [12.0]])  # offsets -1, 0, +1
    # entry (i, j) is row (i - j) + 1
    expected = torch.tensor([[[11.0], [10.0]], [[12.0], [11.0]]])
    torch.testing.assert_close(get_rel_pos(2, 2, table), expected)


def test_window_partition_literal_with_padding() -> None:
    x = torch.arange(1.0, 10.0).view(1, 3, 3, 1)  # 1..9, zero pad to 4 x 4
    windows, pad_hw = window_partition(x, 2)
    assert pad_hw == (4, 4)
    expected = torch.tensor(
        [[[1, 2], [4, 5]], [[3, 0], [6, 0]], [[7, 8], [0, 0]], [[9, 0], [0, 0]]],
        dtype=torch.float32,
    ).unsqueeze(-1)
    torch.testing.assert_close(windows, expected)
    torch.testing.assert_close(window_unpartition(windows, 2, pad_hw, (3, 3)), x)


def test_relative_position_index_literal() -> None:
    # (2, 2) grid, offsets (dh, dw) -> (dh + 1) * 3 + (dw + 1)
    grid = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index((2, 2), class_token=False), grid)
    with_cls = relative_position_index((2, 2))
    assert with_cls.shape == (5, 5)
    assert torch.equal(with_cls[1:, 1:], grid)
    assert with_cls[0, 1:].tolist() == [9] * 4  # class -> token
    assert with_cls[1:, 0].tolist() == [10] * 4  # token -> class
    assert with_cls[0, 0].item() == 11
    # timm's BEiT builds the same index (independent implementation)
    from timm.models.beit import gen_relative_position_index

    assert torch.equal(with_cls, gen_relative_position_index((2, 2)))


# ------------------------------------------------------------- explicit attention
def _explicit_attention(attn: Attention, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax((q * scale) k^T + bias) v, then proj; x (B, N, C), bias (B, heads, N, N)."""
    b, n, c = x.shape
    h, d = attn.num_heads, c // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    logits = (q * d**-0.5) @ k.transpose(-2, -1) + bias
    out = logits.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T + attn.proj.bias


def _queries(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    return qkv.view(b, n, 3, attn.num_heads, -1)[:, :, 0].transpose(1, 2)  # (B, h, N, d)


def test_decomposed_rel_pos_equals_pairwise_bias() -> None:
    torch.manual_seed(0)
    gh, gw = 3, 2
    attn = Attention(16, num_heads=2, rel_pos_size=(gh, gw))
    assert attn.rel_pos_h.shape == (5, 8) and attn.rel_pos_w.shape == (3, 8)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, gh * gw, 16)
    q = _queries(attn, x)
    bias = torch.zeros(2, 2, gh * gw, gh * gw)
    for i in range(gh * gw):
        for j in range(gh * gw):
            hi, wi, hj, wj = i // gw, i % gw, j // gw, j % gw
            rh = attn.rel_pos_h[hi - hj + gh - 1]
            rw = attn.rel_pos_w[wi - wj + gw - 1]
            bias[:, :, i, j] = (q[:, :, i] * rh).sum(-1) + (q[:, :, i] * rw).sum(-1)
    expected = _explicit_attention(attn, x, bias)
    torch.testing.assert_close(attn(x, hw=(gh, gw)), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='token grid'):
        attn(x)


def test_beit_bias_equals_table_lookup() -> None:
    torch.manual_seed(1)
    attn = Attention(16, num_heads=2, rel_pos_bias_grid=(2, 2))
    assert attn.relative_position_bias_table.shape == (3 * 3 + 3, 2)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    index = [[11] + [9] * 4] + [
        [10, *row] for row in [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    ]
    table = attn.relative_position_bias_table
    bias = torch.stack([torch.stack([table[index[i][j]] for j in range(5)]) for i in range(5)])
    bias = bias.permute(2, 0, 1).unsqueeze(0)  # (1, heads, 5, 5)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(attn(x), _explicit_attention(attn, x, bias), atol=1e-5, rtol=1e-5)
    assert 'relative_position_index' not in attn.state_dict()  # derived, non-persistent
    with pytest.raises(ValueError, match='built for 5 tokens'):
        attn(torch.randn(1, 4, 16))


def test_window_block_equals_explicit_windows() -> None:
    """Window 2 on a 3 x 3 grid: zero-padded (after norm1) to 4 x 4, attention per window."""
    torch.manual_seed(2)
    blk = Block(16, 2, window_size=2).eval()
    gh = gw = 3
    x = torch.randn(2, gh * gw, 16)
    y = blk.norm1(x).view(2, gh, gw, 16)
    padded = torch.zeros(2, 4, 4, 16)
    padded[:, :gh, :gw] = y
    a = torch.zeros(2, 4, 4, 16)
    no_bias = torch.zeros(1, 2, 4, 4)
    for r in (0, 2):
        for c in (0, 2):
            win = padded[:, r : r + 2, c : c + 2].reshape(2, 4, 16)
            a[:, r : r + 2, c : c + 2] = _explicit_attention(blk.attn, win, no_bias).view(
                2, 2, 2, 16
            )
    h = x + a[:, :gh, :gw].reshape(2, gh * gw, 16)
    expected = h + blk.mlp(blk.norm2(h))
    torch.testing.assert_close(blk(x, grid=(gh, gw)), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='full token grid'):
        blk(x)


def test_layer_scale_block() -> None:
    torch.manual_seed(3)
    blk = Block(16, 2, init_values=0.1).eval()
    assert torch.equal(blk.gamma_1, torch.full((16,), 0.1))
    with torch.no_grad():
        blk.gamma_1.normal_()
        blk.gamma_2.normal_()
    x = torch.randn(2, 5, 16)
    h = x + blk.gamma_1 * _explicit_attention(blk.attn, blk.norm1(x), torch.zeros(1, 2, 5, 5))
    expected = h + blk.gamma_2 * blk.mlp(blk.norm2(h))
    torch.testing.assert_close(blk(x), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- the ViT
def test_vitdet_layout_keys_and_shapes() -> None:
    m = VisionTransformer(**VITDET)
    sd = m.state_dict()
    assert not any(k.startswith(('norm.', 'fc_norm.', 'head.', 'cls_token')) for k in sd)
    assert sd['pos_embed'].shape == (1, 16, 32)
    # windowed blocks: tables for the 2 x 2 window; global blocks: for the 4 x 4 grid
    assert sd['blocks.0.attn.rel_pos_h'].shape == (3, 16)
    assert sd['blocks.2.attn.rel_pos_w'].shape == (3, 16)
    assert sd['blocks.1.attn.rel_pos_h'].shape == (7, 16)
    assert sd['blocks.3.attn.rel_pos_w'].shape == (7, 16)
    assert [b.window_size for b in m.blocks] == [2, 0, 2, 0]
    # a 40 x 48 input: 5 x 6 grid, padded windows, resampled global tables
    feats = m.forward_features(torch.randn(1, 3, 40, 48))
    assert feats.shape == (1, 30, 32)
    maps = m.forward_intermediates(torch.randn(1, 3, 40, 48), [-1], intermediates_only=True)
    assert maps[0].shape == (1, 32, 5, 6)
    with pytest.raises(ValueError, match='masks and shuffles'):
        m.forward_encoder(torch.randn(1, 3, 32, 32), 0.5)


def test_vitdet_full_block_equals_explicit_global_attention() -> None:
    """A global rel-pos block of the ViT against the entry-by-entry bias."""
    torch.manual_seed(4)
    m = VisionTransformer(**{**VITDET, 'depth': 1, 'window_size': 0, 'global_attn_indexes': ()})
    attn = m.blocks[0].attn
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, 3, 32, 32)
    tokens = m.patch_embed(x).flatten(2).transpose(1, 2) + m.pos_embed
    y = m.blocks[0].norm1(tokens)
    q = _queries(attn, y)
    bias = torch.zeros(2, 2, 16, 16)
    for i in range(16):
        for j in range(16):
            rh = attn.rel_pos_h[i // 4 - j // 4 + 3]
            rw = attn.rel_pos_w[i % 4 - j % 4 + 3]
            bias[:, :, i, j] = (q[:, :, i] * (rh + rw)).sum(-1)
    h = tokens + _explicit_attention(attn, y, bias)
    expected = h + m.blocks[0].mlp(m.blocks[0].norm2(h))
    torch.testing.assert_close(m.forward_features(x), expected, atol=1e-5, rtol=1e-5)


def test_beit_style_vit_keys_and_no_weight_decay() -> None:
    m = VisionTransformer(
        **TINY,
        num_classes=0,
        global_pool='',
        use_rel_pos_bias=True,
        init_values=0.1,
        final_norm=False,
    )
    sd = m.state_dict()
    assert sd['blocks.2.attn.relative_position_bias_table'].shape == (7 * 7 + 3, 2)
    assert torch.equal(sd['blocks.0.gamma_1'], torch.full((32,), 0.1))
    assert 'blocks.0.gamma_2' in sd and 'cls_token' in sd
    assert not any(k.startswith('norm.') or 'relative_position_index' in k for k in sd)
    assert 'blocks.3.attn.relative_position_bias_table' in m.no_weight_decay()
    assert m.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 17, 32)
    with pytest.raises(ValueError, match='built for 17 tokens'):
        m.forward_features(torch.randn(1, 3, 40, 32))


def test_defaults_build_no_new_parameters() -> None:
    names = set(VisionTransformer(**TINY).state_dict())
    assert not any(('rel_pos' in k or 'gamma' in k or 'relative_position' in k) for k in names)
    assert 'norm.weight' in names


def test_final_norm_false_returns_last_block_output() -> None:
    m = VisionTransformer(**TINY, num_classes=0, global_pool='', final_norm=False).eval()
    assert not any(k.startswith('norm.') for k in m.state_dict())
    x = torch.randn(1, 3, 32, 32)
    _, inter = m.forward_intermediates(x, [3], output_fmt='NLC', return_prefix_tokens=True)
    patches, cls = inter[0]
    torch.testing.assert_close(m.forward_features(x), torch.cat([cls, patches], 1))


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        (dict(window_size=2), 'class_token=False'),
        (dict(use_rel_pos=True), 'class_token=False'),
        (dict(class_token=False, global_pool='', global_attn_indexes=(1,)), 'window_size > 0'),
        (
            dict(class_token=False, global_pool='', window_size=2, global_attn_indexes=(4,)),
            'out of range',
        ),
        (dict(class_token=False, global_pool='', window_size=-1), 'window_size'),
        (
            dict(use_rel_pos=True, use_rel_pos_bias=True, class_token=False, global_pool=''),
            'alternatives',
        ),
        (
            dict(use_rel_pos_bias=True, window_size=2, class_token=False, global_pool=''),
            'window_size=2',
        ),
    ],
)
def test_option_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**{**TINY, **kwargs})


def test_layer_decay_of_new_parameters() -> None:
    m = VisionTransformer(**{**VITDET, 'init_values': 1.0})
    groups = layer_decay_param_groups(m, base_lr=1.0, weight_decay=0.05, layer_decay_rate=0.5)
    got = {n: (g['layer_id'], g['weight_decay']) for g in groups for n in g['names']}
    # depth 4 -> 6 ids; block k -> k + 1
    assert got['blocks.0.attn.rel_pos_h'][0] == 1
    assert got['blocks.3.attn.rel_pos_w'][0] == 4
    assert got['blocks.2.gamma_1'] == (3, 0.0)  # 1-D: no weight decay
    assert got['pos_embed'] == (0, 0.0)
    beit = VisionTransformer(**TINY, use_rel_pos_bias=True)
    groups = layer_decay_param_groups(beit, base_lr=1.0, weight_decay=0.05, layer_decay_rate=0.5)
    got = {n: (g['layer_id'], g['weight_decay']) for g in groups for n in g['names']}
    assert got['blocks.1.attn.relative_position_bias_table'] == (2, 0.0)


# ------------------------------------------------------------------ timm features
def test_timm_features_only() -> None:
    import g2sd.models.timm_models  # noqa: F401

    torch.manual_seed(5)
    feats = timm.create_model(
        'g2sd_vit_tiny_patch16_224',
        features_only=True,
        out_indices=(1, 3),
        img_size=64,
        depth=4,
    ).eval()
    assert feats.feature_info.channels() == [192, 192]
    assert feats.feature_info.reduction() == [16, 16]
    assert len(feats.model.blocks) == 4 and isinstance(feats.model.head, torch.nn.Identity)
    x = torch.randn(2, 3, 64, 64)
    out = feats(x)
    assert [o.shape for o in out] == [(2, 192, 4, 4)] * 2
    # the same maps by hand: block outputs without the class token, as (B, C, H, W)
    m = feats.model
    cls = (m.cls_token + m.pos_embed[:, :1]).expand(2, -1, -1)
    t = torch.cat([cls, m.patch_embed(x).flatten(2).transpose(1, 2) + m.pos_embed[:, 1:]], 1)
    hand = []
    for i, blk in enumerate(m.blocks):
        t = blk(t)
        if i in (1, 3):
            hand.append(t[:, 1:].transpose(1, 2).reshape(2, 192, 4, 4))
    for a, b in zip(out, hand):
        torch.testing.assert_close(a, b)
    pruned = timm.create_model(
        'g2sd_vit_tiny_patch16_224', features_only=True, out_indices=(0,), img_size=64
    )
    assert len(pruned.model.blocks) == 1
