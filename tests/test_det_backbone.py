"""ViTDet backbone and simple feature pyramid (g2sd.det) against detectron2's numerics.

The reference below is an independent, functional transcription of detectron2's
``modeling/backbone/vit.py`` (``ViT``, ``Block``, ``Attention``, ``SimpleFeaturePyramid``)
and ``modeling/backbone/utils.py`` (``get_abs_pos``, ``window_partition``,
``window_unpartition``, ``get_rel_pos``, ``add_decomposed_rel_pos``), taking a weights dict
in detectron2 key names (``backbone.net.*``, ``backbone.simfp_*``). ViTDet: Li et al., ECCV
2022; used by G2SD (Huang et al., CVPR 2023).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import g2sd.det  # noqa: F401  (registers the det modules)
from g2sd.checkpoint import CheckpointError, loading
from g2sd.det.backbone import ViTDetBackbone
from g2sd.det.neck import LN2d, SimpleFPN
from g2sd.models.vit import VisionTransformer
from g2sd.registry import MODELS

# ----------------------------------------------------------------------------------------
# detectron2 reference (functional transcription)
# ----------------------------------------------------------------------------------------
EMBED, DEPTH, HEADS, WINDOW, PATCH, IMG, PRETRAIN = 32, 4, 2, 4, 8, 64, 32
GLOBAL = (1, 3)
WINDOW_BLOCKS = tuple(i for i in range(DEPTH) if i not in GLOBAL)
OUT = 16
EPS = 1e-6


def d2_get_abs_pos(abs_pos, has_cls_token, hw):
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    xy_num = abs_pos.shape[1]
    size = int(math.sqrt(xy_num))
    assert size * size == xy_num
    if size != h or size != w:
        new_abs_pos = F.interpolate(
            abs_pos.reshape(1, size, size, -1).permute(0, 3, 1, 2),
            size=(h, w),
            mode='bicubic',
            align_corners=False,
        )
        return new_abs_pos.permute(0, 2, 3, 1)
    return abs_pos.reshape(1, h, w, -1)


def d2_window_partition(x, window_size):
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def d2_window_unpartition(windows, window_size, pad_hw, hw):
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def d2_get_rel_pos(q_size, k_size, rel_pos):
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos_resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode='linear',
        )
        rel_pos_resized = rel_pos_resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        rel_pos_resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def d2_add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = d2_get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = d2_get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum('bhwc,hkc->bhwk', r_q, Rh)
    rel_w = torch.einsum('bhwc,wkc->bhwk', r_q, Rw)
    attn = (
        attn.view(B, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    ).view(B, q_h * q_w, k_h * k_w)
    return attn


def d2_attention(x, w, p, num_heads):
    B, H, W, _ = x.shape
    qkv = F.linear(x, w[p + 'qkv.weight'], w[p + 'qkv.bias'])
    qkv = qkv.reshape(B, H * W, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * num_heads, H * W, -1).unbind(0)
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = d2_add_decomposed_rel_pos(
        attn, q, w[p + 'rel_pos_h'], w[p + 'rel_pos_w'], (H, W), (H, W)
    )
    attn = attn.softmax(dim=-1)
    x = (attn @ v).view(B, num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return F.linear(x, w[p + 'proj.weight'], w[p + 'proj.bias'])


def d2_layer_norm(x, w, p):
    return F.layer_norm(x, x.shape[-1:], w[p + 'weight'], w[p + 'bias'], EPS)


def d2_block(x, w, p, num_heads, window_size):
    shortcut = x
    x = d2_layer_norm(x, w, p + 'norm1.')
    if window_size > 0:
        H, W = x.shape[1], x.shape[2]
        x, pad_hw = d2_window_partition(x, window_size)
    x = d2_attention(x, w, p + 'attn.', num_heads)
    if window_size > 0:
        x = d2_window_unpartition(x, window_size, pad_hw, (H, W))
    x = shortcut + x
    h = d2_layer_norm(x, w, p + 'norm2.')
    h = F.linear(h, w[p + 'mlp.fc1.weight'], w[p + 'mlp.fc1.bias'])
    h = F.gelu(h)
    h = F.linear(h, w[p + 'mlp.fc2.weight'], w[p + 'mlp.fc2.bias'])
    return x + h


def d2_vit(img, w):
    p = 'backbone.net.'
    x = F.conv2d(img, w[p + 'patch_embed.proj.weight'], w[p + 'patch_embed.proj.bias'], PATCH)
    x = x.permute(0, 2, 3, 1)
    x = x + d2_get_abs_pos(w[p + 'pos_embed'], True, (x.shape[1], x.shape[2]))
    for i in range(DEPTH):
        x = d2_block(x, w, f'{p}blocks.{i}.', HEADS, WINDOW if i in WINDOW_BLOCKS else 0)
    return x.permute(0, 3, 1, 2)


def d2_ln2d(x, w, p):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + EPS)
    return w[p + 'weight'][:, None, None] * x + w[p + 'bias'][:, None, None]


def d2_conv_norm(x, w, p, padding):
    # detectron2 Conv2d(bias=False, norm=LayerNorm): conv then norm.
    return d2_ln2d(F.conv2d(x, w[p + 'weight'], None, padding=padding), w, p + 'norm.')


def d2_simple_feature_pyramid(feat, w):
    p = 'backbone.'
    outs = []
    # simfp_2 (scale 4): deconv, LN, GELU, deconv, conv1x1+LN, conv3x3+LN.
    x = F.conv_transpose2d(feat, w[p + 'simfp_2.0.weight'], w[p + 'simfp_2.0.bias'], stride=2)
    x = F.gelu(d2_ln2d(x, w, p + 'simfp_2.1.'))
    x = F.conv_transpose2d(x, w[p + 'simfp_2.3.weight'], w[p + 'simfp_2.3.bias'], stride=2)
    x = d2_conv_norm(x, w, p + 'simfp_2.4.', 0)
    outs.append(d2_conv_norm(x, w, p + 'simfp_2.5.', 1))
    # simfp_3 (scale 2)
    x = F.conv_transpose2d(feat, w[p + 'simfp_3.0.weight'], w[p + 'simfp_3.0.bias'], stride=2)
    x = d2_conv_norm(x, w, p + 'simfp_3.1.', 0)
    outs.append(d2_conv_norm(x, w, p + 'simfp_3.2.', 1))
    # simfp_4 (scale 1)
    x = d2_conv_norm(feat, w, p + 'simfp_4.0.', 0)
    outs.append(d2_conv_norm(x, w, p + 'simfp_4.1.', 1))
    # simfp_5 (scale 0.5): max pool first.
    x = F.max_pool2d(feat, kernel_size=2, stride=2)
    x = d2_conv_norm(x, w, p + 'simfp_5.1.', 0)
    outs.append(d2_conv_norm(x, w, p + 'simfp_5.2.', 1))
    # LastLevelMaxPool on p5.
    outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))
    return outs


def d2_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    """Random non-trivial weights with detectron2's names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    c, hd, hidden, grid = EMBED, EMBED // HEADS, 4 * EMBED, IMG // PATCH
    w = {}
    n = 'backbone.net.'
    w[n + 'patch_embed.proj.weight'] = rnd(c, 3, PATCH, PATCH, std=0.05)
    w[n + 'patch_embed.proj.bias'] = rnd(c)
    w[n + 'pos_embed'] = rnd(1, 1 + (PRETRAIN // PATCH) ** 2, c, std=0.5)
    for i in range(DEPTH):
        b = f'{n}blocks.{i}.'
        size = WINDOW if i in WINDOW_BLOCKS else grid
        for norm in ('norm1', 'norm2'):
            w[b + norm + '.weight'] = rnd(c, std=0.1, mean=1.0)
            w[b + norm + '.bias'] = rnd(c, std=0.1)
        w[b + 'attn.qkv.weight'] = rnd(3 * c, c)
        w[b + 'attn.qkv.bias'] = rnd(3 * c, std=0.1)
        w[b + 'attn.proj.weight'] = rnd(c, c)
        w[b + 'attn.proj.bias'] = rnd(c, std=0.1)
        w[b + 'attn.rel_pos_h'] = rnd(2 * size - 1, hd, std=0.5)
        w[b + 'attn.rel_pos_w'] = rnd(2 * size - 1, hd, std=0.5)
        w[b + 'mlp.fc1.weight'] = rnd(hidden, c)
        w[b + 'mlp.fc1.bias'] = rnd(hidden, std=0.1)
        w[b + 'mlp.fc2.weight'] = rnd(c, hidden, std=0.1)
        w[b + 'mlp.fc2.bias'] = rnd(c, std=0.1)
    f = 'backbone.'

    def deconv(name, cin, cout):
        w[f + name + '.weight'] = rnd(cin, cout, 2, 2)
        w[f + name + '.bias'] = rnd(cout, std=0.1)

    def ln(name, ch):
        w[f + name + '.weight'] = rnd(ch, std=0.1, mean=1.0)
        w[f + name + '.bias'] = rnd(ch, std=0.1)

    def conv(name, cin, k):
        w[f + name + '.weight'] = rnd(OUT, cin, k, k)
        ln(name + '.norm', OUT)

    deconv('simfp_2.0', c, c // 2)
    ln('simfp_2.1', c // 2)
    deconv('simfp_2.3', c // 2, c // 4)
    conv('simfp_2.4', c // 4, 1)
    conv('simfp_2.5', OUT, 3)
    deconv('simfp_3.0', c, c // 2)
    conv('simfp_3.1', c // 2, 1)
    conv('simfp_3.2', OUT, 3)
    conv('simfp_4.0', c, 1)
    conv('simfp_4.1', OUT, 3)
    conv('simfp_5.1', c, 1)
    conv('simfp_5.2', OUT, 3)
    return w


# Literal detectron2 -> g2sd neck module mapping (interface 3 of the det design).
NECK_MAP = {
    'simfp_2.0': 'scale_layers.0.0',
    'simfp_2.1': 'scale_layers.0.1',
    'simfp_2.3': 'scale_layers.0.3',
    'simfp_2.4': 'lateral_convs.0',
    'simfp_2.5': 'fpn_convs.0',
    'simfp_3.0': 'scale_layers.1.0',
    'simfp_3.1': 'lateral_convs.1',
    'simfp_3.2': 'fpn_convs.1',
    'simfp_4.0': 'lateral_convs.2',
    'simfp_4.1': 'fpn_convs.2',
    'simfp_5.1': 'lateral_convs.3',
    'simfp_5.2': 'fpn_convs.3',
}


def map_d2(w: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    backbone, neck = {}, {}
    for key, value in w.items():
        if key.startswith('backbone.net.'):
            backbone[key[len('backbone.net.') :]] = value
            continue
        module, leaf = key[len('backbone.') :].rsplit('.', 1)
        if module.endswith('.norm'):
            neck[f'{NECK_MAP[module[: -len(".norm")]]}.ln.{leaf}'] = value
        elif NECK_MAP[module].startswith(('lateral_convs', 'fpn_convs')):
            neck[f'{NECK_MAP[module]}.conv.{leaf}'] = value
        else:
            neck[f'{NECK_MAP[module]}.{leaf}'] = value
    return backbone, neck


def tiny_backbone(**kw) -> ViTDetBackbone:
    cfg = dict(
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        window_size=WINDOW,
        global_attn_indexes=GLOBAL,
        pretrain_img_size=PRETRAIN,
        pretrain_use_cls_token=True,
        drop_path_rate=0.0,
    )
    cfg.update(kw)
    return ViTDetBackbone(**cfg)


# ----------------------------------------------------------------------------------------
# (a) equivalence with detectron2
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('hw', [(64, 64), (56, 72), (32, 40)])
def test_matches_detectron2_vit_and_simple_feature_pyramid(hw):
    w = d2_weights()
    bb_sd, neck_sd = map_d2(w)
    backbone = tiny_backbone().eval()
    neck = SimpleFPN(EMBED, out_channels=OUT).eval()
    backbone.load_state_dict(bb_sd, strict=True)
    neck.load_state_dict(neck_sd, strict=True)
    img = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref_feat = d2_vit(img, w)
        ref_outs = d2_simple_feature_pyramid(ref_feat, w)
        (feat,) = backbone(img)
        outs = neck((feat,))
    assert feat.shape == (2, EMBED, hw[0] // PATCH, hw[1] // PATCH)
    torch.testing.assert_close(feat, ref_feat, atol=1e-5, rtol=1e-5)
    assert len(outs) == 5
    for level, (ours, ref) in enumerate(zip(outs, ref_outs)):
        assert ours.shape == ref.shape, level
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_matches_detectron2_in_training_mode_with_gradients():
    """Training path (position table resampled with gradient at every step)."""
    w = d2_weights(seed=3)
    bb_sd, _ = map_d2(w)
    backbone = tiny_backbone().train()
    backbone.load_state_dict(bb_sd, strict=True)
    img = torch.randn(1, 3, 56, 72)
    (feat,) = backbone(img)
    torch.testing.assert_close(feat, d2_vit(img, w), atol=1e-5, rtol=1e-5)
    ref_pos = w['backbone.net.pos_embed'].clone().requires_grad_(True)
    ref = d2_vit(img, {**w, 'backbone.net.pos_embed': ref_pos})
    feat.square().sum().backward()
    ref.square().sum().backward()
    assert backbone.pos_embed.grad is not None
    torch.testing.assert_close(backbone.pos_embed.grad, ref_pos.grad, atol=1e-4, rtol=1e-4)
    assert backbone.pos_embed.grad[0, 0].abs().sum() == 0  # the unused class slot


# ----------------------------------------------------------------------------------------
# (b) a window covering the grid with zero rel-pos is plain global attention
# ----------------------------------------------------------------------------------------
def test_whole_grid_window_with_zero_rel_pos_is_plain_vit():
    det = ViTDetBackbone(
        img_size=32,
        patch_size=8,
        embed_dim=EMBED,
        depth=2,
        num_heads=HEADS,
        window_size=4,
        global_attn_indexes=(),
        pretrain_img_size=32,
        pretrain_use_cls_token=True,
    ).eval()
    plain = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=EMBED,
        depth=2,
        num_heads=HEADS,
        num_classes=0,
        global_pool='',
        class_token=False,
        final_norm=False,
    ).eval()
    sd = {k: torch.randn_like(v) * 0.2 for k, v in det.state_dict().items()}
    for k in sd:
        if 'rel_pos' in k:
            sd[k] = torch.zeros_like(sd[k])
    det.load_state_dict(sd)
    plain_sd = {k: v for k, v in sd.items() if 'rel_pos' not in k}
    plain_sd['pos_embed'] = sd['pos_embed'][:, 1:]
    plain.load_state_dict(plain_sd, strict=True)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (feat,) = det(img)
        tokens = plain.forward_features(img)
    ref = tokens.transpose(1, 2).reshape(2, EMBED, 4, 4)
    torch.testing.assert_close(feat, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# (c) activation checkpointing
# ----------------------------------------------------------------------------------------
def test_act_checkpoint_same_output_and_grads(monkeypatch):
    ref = tiny_backbone(drop_path_rate=0.2).train()
    ckpt = tiny_backbone(drop_path_rate=0.2, act_checkpoint=True).train()
    ckpt.load_state_dict(ref.state_dict())
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get('use_reentrant'))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', counting)
    img = torch.randn(2, 3, 56, 72)
    torch.manual_seed(5)
    out_ref = ref(img)[0]
    torch.manual_seed(5)
    out_ckpt = ckpt(img)[0]
    assert calls == [False] * DEPTH
    torch.testing.assert_close(out_ckpt, out_ref, atol=1e-6, rtol=1e-6)
    out_ref.square().mean().backward()
    out_ckpt.square().mean().backward()
    grads = dict(ckpt.named_parameters())
    for name, p in ref.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-6, rtol=1e-5)
    calls.clear()
    with torch.no_grad():
        ckpt(img)
    ckpt.eval()
    ckpt(img)
    assert calls == []  # no checkpointing without grad / in eval mode


# ----------------------------------------------------------------------------------------
# (d) pretrained loading
# ----------------------------------------------------------------------------------------
def gd_student_checkpoint() -> dict[str, torch.Tensor]:
    """An official-G2SD-GD-style student: MAE encoder + decoder + feature projector."""
    enc = VisionTransformer(
        img_size=PRETRAIN, patch_size=PATCH, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS
    )
    sd = {k: v.clone() for k, v in enc.state_dict().items() if not k.startswith('head.')}
    sd['pos_embed'] = torch.randn_like(sd['pos_embed'])
    sd['blocks.2.attn.qkv.weight'] = torch.randn_like(sd['blocks.2.attn.qkv.weight'])
    sd['mask_token'] = torch.zeros(1, 1, 16)
    sd['decoder_embed.weight'] = torch.randn(16, EMBED)
    sd['decoder_embed.bias'] = torch.zeros(16)
    sd['decoder_pos_embed'] = torch.zeros(1, 17, 16)
    sd['decoder_blocks.0.norm1.weight'] = torch.ones(16)
    sd['decoder_norm.weight'] = torch.ones(16)
    sd['decoder_pred.weight'] = torch.randn(PATCH * PATCH * 3, 16)
    sd['decoderfeature_pred.weight'] = torch.randn(64, 16)
    sd['decoderfeature_pred.bias'] = torch.zeros(64)
    return sd


def test_gd_student_loads_via_pretrained(tmp_path, monkeypatch):
    sd = gd_student_checkpoint()
    path = tmp_path / 'gd_student.pth'
    torch.save({'model': sd}, path)
    logged = []
    monkeypatch.setattr(loading, '_log', logged.append)  # the loader's one report
    backbone = tiny_backbone(pretrained=str(path))
    assert logged == []  # nothing is loaded while building
    backbone.init_weights()
    assert len(logged) == 1
    text = logged[0]
    assert 'decoder_*' in text and 'decoderfeature_pred' in text and 'mask_token' in text
    assert 'blocks.0.attn.rel_pos_h' in text  # new tables, kept at their zero init
    assert 'cls_token' in text
    state = backbone.state_dict()
    torch.testing.assert_close(state['pos_embed'], sd['pos_embed'])
    torch.testing.assert_close(state['blocks.2.attn.qkv.weight'], sd['blocks.2.attn.qkv.weight'])
    for k, v in state.items():
        if 'rel_pos' in k:
            assert torch.count_nonzero(v) == 0, k


def test_distiller_checkpoint_loads_via_pretrained(tmp_path):
    sd = gd_student_checkpoint()
    wrapped = {f'student.{k}': v for k, v in sd.items() if not k.startswith('decoderfeature')}
    wrapped['projector.0.weight'] = torch.randn(8, 8)
    path = tmp_path / 'distiller.pth'
    torch.save({'state_dict': wrapped}, path)
    backbone = tiny_backbone(pretrained=str(path))
    backbone.init_weights()
    torch.testing.assert_close(backbone.pos_embed.detach(), sd['pos_embed'])


def test_foreign_key_fails_with_named_error(tmp_path):
    sd = gd_student_checkpoint()
    sd['foreign_adapter.weight'] = torch.randn(3, 3)
    path = tmp_path / 'foreign.pth'
    torch.save({'model': sd}, path)
    backbone = tiny_backbone(pretrained=str(path))
    with pytest.raises(CheckpointError, match='foreign_adapter.weight'):
        backbone.init_weights()


def test_shape_mismatch_fails(tmp_path):
    sd = gd_student_checkpoint()
    sd['blocks.1.mlp.fc1.weight'] = torch.randn(7, EMBED)
    path = tmp_path / 'bad.pth'
    torch.save({'model': sd}, path)
    with pytest.raises(CheckpointError, match='blocks.1.mlp.fc1.weight'):
        tiny_backbone(pretrained=str(path)).init_weights()


# ----------------------------------------------------------------------------------------
# (e) pyramid shapes and LN2d
# ----------------------------------------------------------------------------------------
def test_simple_fpn_paper_levels_shapes_and_strides():
    neck = MODELS.build(dict(type='g2sd.SimpleFPN', backbone_channel=EMBED, out_channels=OUT))
    assert [type(m) for m in neck.scale_layers[0]] == [
        nn.ConvTranspose2d,
        LN2d,
        nn.GELU,
        nn.ConvTranspose2d,
    ]
    assert [type(m) for m in neck.scale_layers[1]] == [nn.ConvTranspose2d]
    assert len(neck.scale_layers[2]) == 0
    assert [type(m) for m in neck.scale_layers[3]] == [nn.MaxPool2d]
    assert neck.lateral_convs[0].conv.bias is None
    assert isinstance(neck.fpn_convs[3].ln, LN2d) and neck.fpn_convs[3].ln.eps == 1e-6
    image = 128  # patch 16 -> an 8x8 stride-16 map
    outs = neck((torch.randn(1, EMBED, 8, 8),))
    strides = [image // o.shape[-1] for o in outs]
    assert strides == [4, 8, 16, 32, 64]
    assert all(o.shape[:2] == (1, OUT) for o in outs)
    odd = neck((torch.randn(1, EMBED, 7, 9),))
    assert [tuple(o.shape[-2:]) for o in odd] == [(28, 36), (14, 18), (7, 9), (3, 4), (2, 2)]


def test_simple_fpn_downsampling_levels():
    neck = SimpleFPN(EMBED, out_channels=OUT, scale_factors=(1.0, 0.5, 0.25, 0.125), num_outs=4)
    kinds = [[(type(m), getattr(m, 'kernel_size', None)) for m in s] for s in neck.scale_layers]
    assert kinds == [[], [(nn.MaxPool2d, 2)], [(nn.MaxPool2d, 4)], [(nn.MaxPool2d, 8)]]
    outs = neck((torch.randn(2, EMBED, 16, 16),))
    assert [tuple(o.shape) for o in outs] == [(2, OUT, 16 // 2**i, 16 // 2**i) for i in range(4)]
    up = SimpleFPN(EMBED, out_channels=OUT, scale_factors=(8.0, 4.0), num_outs=2)
    assert [type(m) for m in up.scale_layers[0]] == [
        nn.ConvTranspose2d,
        LN2d,
        nn.GELU,
        nn.ConvTranspose2d,
        LN2d,
        nn.GELU,
        nn.ConvTranspose2d,
    ]
    assert up.lateral_convs[0].conv.in_channels == EMBED // 8


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(scale_factors=(3.0,)),
        dict(scale_factors=(4.0, 1.0)),
        dict(scale_factors=(2.0, 1.0), num_outs=1),
        dict(scale_factors=()),
    ],
)
def test_simple_fpn_rejects_bad_args(kwargs):
    with pytest.raises(ValueError):
        SimpleFPN(EMBED, **kwargs)


def test_simple_fpn_init_is_detectron2_default_not_kaiming():
    torch.manual_seed(0)
    neck = SimpleFPN(64, out_channels=128)
    neck.init_weights()
    w = neck.fpn_convs[0].conv.weight
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) bound
    assert w.abs().max() <= bound + 1e-7
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.all(neck.fpn_convs[0].ln.weight == 1) and torch.all(neck.fpn_convs[0].ln.bias == 0)


def test_ln2d_matches_formula():
    ln = LN2d(5)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(5))
        ln.bias.copy_(torch.randn(5))
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight.view(1, 5, 1, 1) + ln.bias.view(
        1, 5, 1, 1
    )
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)
    assert set(ln.state_dict()) == {'weight', 'bias'}
    with pytest.raises(ValueError, match='5'):
        ln(torch.randn(2, 4, 3, 3))


# ----------------------------------------------------------------------------------------
# (f) layer depth and options
# ----------------------------------------------------------------------------------------
def test_get_layer_depth_of_backbone_keys():
    backbone = tiny_backbone()
    n = DEPTH + 2
    assert backbone.get_layer_depth('pos_embed') == (0, n)
    assert backbone.get_layer_depth('patch_embed.proj.weight') == (0, n)
    assert backbone.get_layer_depth('blocks.0.norm1.weight') == (1, n)
    assert backbone.get_layer_depth('blocks.2.attn.rel_pos_h') == (3, n)
    assert backbone.get_layer_depth('blocks.3.mlp.fc2.bias') == (4, n)
    keys = set(backbone.state_dict())
    assert not any(k.startswith(('cls_token', 'norm.', 'head.', 'fc_norm.')) for k in keys)
    assert backbone.pos_embed.shape == (1, 1 + (PRETRAIN // PATCH) ** 2, EMBED)
    assert backbone.blocks[0].attn.rel_pos_h.shape == (2 * WINDOW - 1, EMBED // HEADS)
    assert backbone.blocks[1].attn.rel_pos_h.shape == (2 * IMG // PATCH - 1, EMBED // HEADS)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(pretrain_img_size=30), '30'),
        (dict(pretrain_img_size=-8), '-8'),
        (dict(act_checkpoint='yes'), 'yes'),
        (dict(pretrain_use_cls_token=1), '1'),
    ],
)
def test_vit_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_backbone(**kwargs)


def test_pretrain_options_off_keep_plain_layout():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=EMBED, depth=1, num_heads=2)
    assert vit.pos_embed.shape == (1, 17, EMBED)
    assert vit.pos_embed_grid == (4, 4)
    with_pretrain = VisionTransformer(
        img_size=64, patch_size=8, embed_dim=EMBED, depth=1, num_heads=2, pretrain_img_size=32
    )
    assert with_pretrain.pos_embed.shape == (1, 17, EMBED)
    # sin-cos init at the stored 4x4 grid (class slot zero), MAE's table
    from g2sd.layers.pos_embed import get_2d_sincos_pos_embed

    torch.testing.assert_close(
        with_pretrain.pos_embed.detach()[0], get_2d_sincos_pos_embed(EMBED, 4, cls_token=True)
    )
    assert with_pretrain(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
