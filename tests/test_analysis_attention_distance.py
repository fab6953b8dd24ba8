"""Mean attention distance (D-MAE, Wang et al., ICML 2023): literal values and the CLI."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from g2sd.analysis.attention_distance import (
    distance_matrix,
    mean_attention_distance,
    model_attention_distance,
    patch_attention,
    uniform_attention_distance,
)
from g2sd.models import VisionTransformer

REPO = Path(__file__).resolve().parents[1]
S2, S5 = math.sqrt(2), math.sqrt(5)
#: 2x2 grid, patch 4: distances (0, 4, 4, 4 sqrt 2) from every patch; uniform mean by hand.
UNIFORM_2X2_P4 = (8 + 4 * S2) / 4
#: Tiny ViT on 28 px images with 14 px patches: 2x2 grid, uniform mean (28 + 14 sqrt 2) / 4.
UNIFORM_2X2_P14 = (28 + 14 * S2) / 4
TINY = dict(img_size=28, patch_size=14, in_chans=1, embed_dim=32, depth=2, num_heads=2)


def _cli():
    spec = importlib.util.spec_from_file_location(
        'attention_distance_cli', REPO / 'tools' / 'analysis' / 'attention_distance.py'
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _zero_qk(model: VisionTransformer) -> VisionTransformer:
    """q = k = 0 in every block: uniform attention over all tokens."""
    with torch.no_grad():
        for blk in model.blocks:
            c = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * c].zero_()
            blk.attn.qkv.bias[: 2 * c].zero_()
    return model


def _onehot(targets: list[int], n: int = 4) -> torch.Tensor:
    """(n, n) attention with row i one-hot at targets[i]."""
    a = torch.zeros(n, n)
    a[torch.arange(n), torch.tensor(targets)] = 1.0
    return a


def test_distance_matrix_2x3_literal():
    expected = torch.tensor(
        [
            [0, 1, 2, 1, S2, S5],
            [1, 0, 1, S2, 1, S2],
            [2, 1, 0, S5, S2, 1],
            [1, S2, S5, 0, 1, 2],
            [S2, 1, S2, 1, 0, 1],
            [S5, S2, 1, 2, 1, 0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(distance_matrix((2, 3), 1), expected)
    torch.testing.assert_close(distance_matrix((2, 3), 4), 4 * expected)
    # non-square patches (p_h, p_w) = (2, 3): patch (0, 0) to (1, 1) is sqrt(2^2 + 3^2)
    d = distance_matrix((2, 3), (2, 3))
    assert d[0, 4].item() == pytest.approx(math.sqrt(13))
    assert d[0, 2].item() == pytest.approx(6.0)
    assert d[0, 3].item() == pytest.approx(2.0)


def test_hand_built_maps_2x2_patch4():
    grid, p = (2, 2), 4
    self_attn = _onehot([0, 1, 2, 3])
    uniform = torch.full((4, 4), 0.25)
    diagonal = _onehot([3, 2, 1, 0])  # (0,0)<->(1,1), (0,1)<->(1,0)
    right = _onehot([1, 0, 3, 2])  # horizontal neighbour: 4 px
    attn = torch.stack([self_attn, uniform, diagonal, right])[None]  # (1, 4 heads, 4, 4)
    out = mean_attention_distance(attn, grid, p)
    assert out.shape == (4,)
    assert out.tolist() == pytest.approx([0.0, UNIFORM_2X2_P4, 4 * S2, 4.0])
    assert math.isclose(UNIFORM_2X2_P4, 3.414213562)
    assert uniform_attention_distance(grid, p) == pytest.approx(UNIFORM_2X2_P4)
    # averaged over images: image 0 looks at itself (0), image 1 at the diagonal (4 sqrt 2)
    two = torch.stack([self_attn[None], diagonal[None]])  # (2, 1, 4, 4)
    assert mean_attention_distance(two, grid, p).tolist() == pytest.approx([2 * S2])
    # averaged over queries: two queries at distance 4, two at 0 -> 2
    half = _onehot([1, 1, 2, 2])
    assert mean_attention_distance(half[None, None], grid, p).item() == pytest.approx(2.0)


def test_mean_attention_distance_rejects_bad_input():
    with pytest.raises(ValueError, match='probabilities'):
        mean_attention_distance(torch.full((1, 1, 4, 4), 2.0), (2, 2), 4)  # logits
    with pytest.raises(ValueError, match='does not match'):
        mean_attention_distance(torch.full((1, 1, 6, 6), 1 / 6), (2, 2), 4)
    with pytest.raises(ValueError, match='B, heads, N, N'):
        mean_attention_distance(torch.full((4, 4), 0.25), (2, 2), 4)
    with pytest.raises(ValueError, match='positive'):
        distance_matrix((0, 2), 4)


def test_patch_attention_class_token_and_renormalisation():
    q = torch.zeros(1, 2, 5, 8)  # class token + 4 patches: uniform over 5 keys
    full = patch_attention(q, q, num_patches=4, num_lead_tokens=1, renormalize=False)
    torch.testing.assert_close(full, torch.full((1, 2, 4, 4), 0.2))
    renorm = patch_attention(q, q, num_patches=4, num_lead_tokens=1)
    torch.testing.assert_close(renorm, torch.full((1, 2, 4, 4), 0.25))
    # scale head_dim^-0.5: logits q.k / sqrt(4) = 2 on the diagonal, 0 elsewhere
    e = torch.eye(4)[None, None] * 2.0  # (1, 1, 4, 4): token i = 2 e_i, head_dim 4
    a = patch_attention(e, e, num_patches=4)
    diag = math.exp(2) / (math.exp(2) + 3)
    assert a[0, 0, 0, 0].item() == pytest.approx(diag, rel=1e-5)
    assert a[0, 0, 0, 1].item() == pytest.approx(1 / (math.exp(2) + 3), rel=1e-5)
    with pytest.raises(ValueError, match='do not fit'):
        patch_attention(q, q, num_patches=5, num_lead_tokens=1)


def _independent_distance(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Per-block distances from the model's own forward (return_qkv), softmax and G by hand."""
    centres = [(r * 14 + 7, c * 14 + 7) for r, c in itertools.product(range(2), range(2))]
    g = torch.tensor([[math.dist(a, b) for b in centres] for a in centres], dtype=torch.float64)
    tokens, _ = model.prepare_tokens(x)
    rows = []
    for blk in model.blocks:
        tokens, (q, k, _) = blk(tokens, return_qkv=True)
        logits = torch.einsum('bhid,bhjd->bhij', q, k) / math.sqrt(q.shape[-1])
        w = torch.exp(logits - logits.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        pp = w[:, :, 1:, 1:].double()
        pp = pp / pp.sum(-1, keepdim=True)
        rows.append((pp * g).sum(-1).mean(dim=(0, 2)))
    return torch.stack(rows)


@torch.no_grad()
def test_model_attention_distance_shape_value_and_uniform():
    model = VisionTransformer(num_classes=0, global_pool='avg', **TINY).eval()
    x = torch.randn(5, 1, 28, 28)
    out = model_attention_distance(model, x, batch_size=2)  # 3 batches: 2 + 2 + 1
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()
    assert ((out >= 0) & (out <= 14 * S2)).all()
    torch.testing.assert_close(out, _independent_distance(model, x), rtol=1e-5, atol=1e-6)
    model.train()
    model_attention_distance(model, x)
    assert model.training  # mode restored

    uni = _zero_qk(VisionTransformer(num_classes=0, global_pool='avg', **TINY))
    torch.testing.assert_close(
        model_attention_distance(uni, x), torch.full((2, 2), UNIFORM_2X2_P14, dtype=torch.float64)
    )
    # without renormalisation the class token keeps 1/5 of each row (distance 0)
    torch.testing.assert_close(
        model_attention_distance(uni, x, renormalize=False),
        torch.full((2, 2), UNIFORM_2X2_P14 * 4 / 5, dtype=torch.float64),
    )
    assert math.isclose(UNIFORM_2X2_P14, 11.949747468)


def test_model_attention_distance_heads_and_errors():
    model = VisionTransformer(num_classes=0, global_pool='avg', last_block_heads=1, **TINY)
    out = model_attention_distance(_zero_qk(model), torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 2)
    assert out[0].tolist() == pytest.approx([UNIFORM_2X2_P14] * 2)
    assert out[1, 0].item() == pytest.approx(UNIFORM_2X2_P14)
    assert math.isnan(out[1, 1].item())
    with pytest.raises(TypeError, match='VisionTransformer'):
        model_attention_distance(torch.nn.Linear(2, 2), torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match='images'):
        model_attention_distance(model, torch.randn(1, 28, 28))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli().main(['--help'])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert '--model' in text and '--no-renormalize' in text and '--arch' in text


def test_cli_bad_model(tmp_path):
    with pytest.raises(SystemExit) as exc:
        _cli().main(['--model', f'x={tmp_path / "missing.pth"}'])
    assert exc.value.code == 2


def test_cli_runs_on_tiny_models(tmp_path, fmnist_root, capsys):
    torch.save(
        _zero_qk(VisionTransformer(num_classes=0, **TINY)).state_dict(), tmp_path / 'uni.pth'
    )
    out = tmp_path / 'out'
    argv = [
        '--model', 'random=random',
        '--model', f'zero qk={tmp_path / "uni.pth"}',
        '--arch', json.dumps(TINY),
        '--num-images', '10',
        '--data-root', str(fmnist_root),
        '--out-dir', str(out),
        '--name', 'ad',
    ]  # fmt: skip
    assert _cli().main(argv) == 0
    assert (out / 'ad.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    report = json.loads((out / 'ad.json').read_text())
    assert report['num_images'] == 10
    assert report['grid'] == [2, 2] and report['patch_size'] == [14, 14]
    assert report['uniform_attention_distance'] == pytest.approx(UNIFORM_2X2_P14)
    assert list(report['models']) == ['random', 'zero qk']
    uni = report['models']['zero qk']
    assert uni['checkpoint'].endswith('uni.pth')
    assert sum(uni['per_head'], []) == pytest.approx([UNIFORM_2X2_P14] * 4)
    rand = report['models']['random']
    assert rand['checkpoint'] is None
    assert len(rand['per_head']) == 2 and all(len(r) == 2 for r in rand['per_head'])
    assert sum(rand['per_head'], []) != pytest.approx(
        sum(uni['per_head'], [])
    )  # the checkpoint was loaded
    assert rand['per_layer_mean'][0] == pytest.approx(sum(rand['per_head'][0]) / 2)
    table = capsys.readouterr().out
    assert 'zero qk' in table and f'{UNIFORM_2X2_P14:.2f}' in table
