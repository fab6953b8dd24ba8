"""The one ViT and the MAE model: shapes, key layout, timm parity, MAE definitions."""

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from g2sd.models import MaskedAutoencoderViT, VisionTransformer, get_2d_sincos_pos_embed
from g2sd.models.vit import random_masking, resample_pos_embed

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _mae_numpy_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's reference formula (util/pos_embed.py), re-written with numpy."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh = np.arange(grid_size, dtype=np.float32)
    gw = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


def test_sincos_matches_mae_formula():
    ours = get_2d_sincos_pos_embed(64, 5, cls_token=True).numpy()
    np.testing.assert_allclose(ours, _mae_numpy_sincos(64, 5), atol=1e-6)


def test_sincos_rejects_bad_dim():
    with pytest.raises(ValueError, match='divisible by 4'):
        get_2d_sincos_pos_embed(30, 4)


@pytest.mark.parametrize('size', [(32, 32), (48, 64), (16, 40)])
def test_vit_shapes_any_size(size):
    m = VisionTransformer(num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, *size)
    n = (size[0] // 8) * (size[1] // 8)
    assert m.forward_features(x).shape == (2, n + 1, 32)
    assert m(x).shape == (2, 5)


def test_vit_bad_input_errors():
    m = VisionTransformer(num_classes=5, **TINY)
    with pytest.raises(ValueError, match='expected images'):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match='not divisible'):
        m(torch.randn(2, 3, 30, 32))
    with pytest.raises(ValueError, match='global_pool'):
        VisionTransformer(global_pool='max', **TINY)


def test_vit_matches_timm_vision_transformer():
    """Same keys and same outputs as timm's VisionTransformer (independent implementation)."""
    ours = VisionTransformer(num_classes=7, **TINY).eval()
    ref = timm.models.vision_transformer.VisionTransformer(num_classes=7, **TINY).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_vit_global_avg_pool_uses_fc_norm_like_mae_finetune():
    ours = VisionTransformer(num_classes=4, global_pool='avg', **TINY).eval()
    keys = ours.state_dict().keys()
    assert 'fc_norm.weight' in keys and 'norm.weight' not in keys
    ref = timm.models.vision_transformer.VisionTransformer(
        num_classes=4, global_pool='avg', fc_norm=True, **TINY
    ).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_pos_embed_resample_identity_and_shape():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4)) is pe
    out = resample_pos_embed(pe, (6, 2))
    assert out.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(out[:, :1], pe[:, :1])


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(indices=[0, -1]),
        dict(indices=2, norm=True),
        dict(indices=None, output_fmt='NLC', return_prefix_tokens=True),
        dict(indices=[1], stop_early=True),
    ],
)
def test_forward_intermediates_matches_timm_contract(kwargs):
    """Same outputs as timm's VisionTransformer.forward_intermediates (independent code)."""
    ours = VisionTransformer(num_classes=3, **TINY).eval()
    ref = timm.models.vision_transformer.VisionTransformer(num_classes=3, **TINY).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    final, inter = ours.forward_intermediates(x, **kwargs)
    ref_final, ref_inter = ref.forward_intermediates(x, **kwargs)
    torch.testing.assert_close(final, ref_final, atol=1e-5, rtol=1e-5)
    assert len(inter) == len(ref_inter)
    for a, b in zip(inter, ref_inter):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    only = ours.forward_intermediates(x, **kwargs, intermediates_only=True)
    assert len(only) == len(inter)


def test_forward_intermediates_shapes_and_errors():
    m = VisionTransformer(num_classes=3, **TINY).eval()
    x = torch.randn(1, 3, 32, 48)
    maps = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [o.shape for o in maps] == [(1, 32, 4, 6)] * 2
    with pytest.raises(ValueError, match='output_fmt'):
        m.forward_intermediates(x, output_fmt='NHWC')
    with pytest.raises(ValueError, match='out of range'):
        m.forward_intermediates(x, indices=[2])


def test_layer_depth():
    m = VisionTransformer(num_classes=3, **TINY)
    assert m.get_layer_depth('cls_token') == (0, 4)
    assert m.get_layer_depth('patch_embed.proj.weight') == (0, 4)
    assert m.get_layer_depth('blocks.1.mlp.fc1.weight') == (2, 4)
    assert m.get_layer_depth('head.weight') == (3, 4)


def test_drop_path_modes_and_last_block_heads():
    m = VisionTransformer(
        drop_path_rate=0.1, drop_path_mode='constant', last_block_heads=4, **{**TINY, 'depth': 3}
    )
    assert [b.drop_path.p for b in m.blocks] == [0.1, 0.1, 0.0]
    assert [b.attn.num_heads for b in m.blocks] == [2, 2, 4]
    with pytest.raises(ValueError, match='drop_path_mode'):
        VisionTransformer(drop_path_mode='cosine', **TINY)


def test_random_masking_shared_noise_and_ratio():
    x = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    a = random_masking(x, 0.75, noise)
    b = random_masking(x, 0.75, noise)
    assert torch.equal(a[1], b[1]) and a[0].shape == (2, 4, 4)
    assert a[1].sum().item() == 2 * 12
    # the visible tokens are exactly the unmasked ones, in ids_keep order
    for i in range(2):
        vis = (a[1][i] == 0).nonzero().flatten()
        assert set(vis.tolist()) == set(a[3][i].tolist())
        torch.testing.assert_close(a[0][i], x[i, a[3][i]])
    with pytest.raises(ValueError, match='mask_ratio'):
        random_masking(x, 1.0)


def _tiny_mae(**kw):
    cfg = dict(TINY, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)
    cfg.update(kw)
    return MaskedAutoencoderViT(**cfg)


def test_mae_keys_follow_official_layout():
    keys = set(_tiny_mae().state_dict())
    for k in [
        'cls_token',
        'pos_embed',
        'mask_token',
        'patch_embed.proj.weight',
        'decoder_embed.weight',
        'decoder_pos_embed',
        'decoder_blocks.1.mlp.fc2.bias',
        'decoder_norm.weight',
        'decoder_pred.weight',
        'norm.weight',
    ]:
        assert k in keys, k
    assert not any(k.startswith(('head', 'fc_norm')) for k in keys)
    no_head = set(_tiny_mae(pixel_head=False).state_dict())
    assert not any(k.startswith(('decoder_norm', 'decoder_pred')) for k in no_head)


def test_mae_patchify_roundtrip():
    m = _tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    p = m.patchify(imgs)
    assert p.shape == (2, 16, 8 * 8 * 3)
    torch.testing.assert_close(m.unpatchify(p), imgs)


@pytest.mark.parametrize('norm_pix', [True, False])
def test_mae_loss_equals_paper_definition(norm_pix):
    """MSE between predicted and (normalised) target pixels, averaged over masked patches."""
    m = _tiny_mae(norm_pix_loss=norm_pix)
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    loss, pred, mask = m(imgs, mask_ratio=0.75, noise=noise)
    # independent target: unfold gives (B, C*p*p, N) in (c, p, q) order; reorder to (p, q, c)
    cols = F.unfold(imgs, kernel_size=8, stride=8)  # (B, C*64, N)
    target = cols.reshape(2, 3, 64, 16).permute(0, 3, 2, 1).reshape(2, 16, 192)
    if norm_pix:
        mu = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True, unbiased=True)
        target = (target - mu) / torch.sqrt(var + 1e-6)
    expected = 0.0
    count = 0
    for b in range(2):
        for n in range(16):
            if mask[b, n] == 1:
                expected += ((pred[b, n] - target[b, n]) ** 2).mean()
                count += 1
    assert count == 2 * 12
    torch.testing.assert_close(loss, expected / count, atol=1e-5, rtol=1e-5)
    assert math.isfinite(loss.item())


def test_mae_decoder_taps_and_errors():
    m = _tiny_mae(pixel_head=False)
    enc = m.forward_encoder(torch.randn(2, 3, 32, 32), 0.75)
    assert enc.latent.shape == (2, 5, 32)
    tok = m.forward_decoder(enc.latent, enc.ids_restore, num_blocks=1, predict=False)
    assert tok.shape == (2, 17, 16)
    with pytest.raises(RuntimeError, match='pixel_head=False'):
        m.forward_decoder(enc.latent, enc.ids_restore)
    with pytest.raises(ValueError, match='num_blocks'):
        m.forward_decoder(enc.latent, enc.ids_restore, num_blocks=3, predict=False)
