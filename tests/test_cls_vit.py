"""The distillation-token ViT: placements, outputs, loading, layer-decay table."""

from __future__ import annotations

import pytest
import torch

from g2sd.checkpoint import CheckpointError, load_pretrained
from g2sd.cls import DIST_KEYS, DistilledVisionTransformer, ViTClassifier
from g2sd.models import VisionTransformer
from g2sd.optim import layer_decay_param_groups

KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def official_forward(m: DistilledVisionTransformer, x: torch.Tensor):
    """G2SD models_vit.py forward (distillation=True, cls token), with our module names."""
    b = x.shape[0]
    t = m.patch_embed(x).flatten(2).transpose(1, 2)
    t = torch.cat((m.cls_token.expand(b, -1, -1), t), dim=1)
    t = t + m.pos_embed
    t = torch.cat((t, m.dist_token.expand(b, -1, -1)), dim=1)
    for blk in m.blocks:
        t = blk(t)
    t = m.norm(t)
    return m.head(t[:, 0]), m.head_dist(t[:, -1])


def test_end_placement_matches_official_code() -> None:
    m = DistilledVisionTransformer(**KW).eval()
    x = torch.randn(3, 3, 32, 32)
    cls_ref, dist_ref = official_forward(m, x)
    torch.testing.assert_close(m(x), (cls_ref + dist_ref) / 2)
    m.train()
    cls_out, dist_out = m(x)
    torch.testing.assert_close(cls_out, cls_ref)
    torch.testing.assert_close(dist_out, dist_ref)


@pytest.mark.parametrize('position', ['end', 'deit'])
def test_eval_output_is_average_of_heads(position: str) -> None:
    m = DistilledVisionTransformer(dist_token_position=position, **KW)
    x = torch.randn(2, 3, 32, 32)
    m.train()
    cls_logits, dist_logits = m(x)
    assert cls_logits.shape == dist_logits.shape == (2, 5)
    assert not torch.allclose(cls_logits, dist_logits)
    m.eval()
    torch.testing.assert_close(m(x), (cls_logits + dist_logits) / 2)
    m.eval_output = 'cls'
    torch.testing.assert_close(m(x), cls_logits)
    m.eval_output = 'dist'
    torch.testing.assert_close(m(x), dist_logits)


def test_token_placement() -> None:
    x = torch.randn(2, 3, 32, 32)
    end = DistilledVisionTransformer(dist_token_position='end', **KW)
    tok, _ = end.prepare_tokens(x)
    assert tok.shape == (2, 2 + 16, 32)
    torch.testing.assert_close(tok[:, -1], end.dist_token[0].expand(2, -1))  # no position
    torch.testing.assert_close(tok[:, 0], (end.cls_token + end.pos_embed[:, :1])[0].expand(2, -1))
    assert end.dist_pos_embed is None and end.pos_embed.shape == (1, 17, 32)

    deit = DistilledVisionTransformer(dist_token_position='deit', **KW)
    tok, _ = deit.prepare_tokens(x)
    torch.testing.assert_close(tok[:, 1], (deit.dist_token + deit.dist_pos_embed)[0].expand(2, -1))
    torch.testing.assert_close(tok[:, 2:], deit.patchify_embed(x))
    assert deit.pos_embed.shape == (1, 17, 32)  # same layout as every MAE / GD checkpoint
    assert deit.forward_features(x).shape == (2, 18, 32)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match='dist_token_position'):
        DistilledVisionTransformer(dist_token_position='middle', **KW)
    with pytest.raises(ValueError, match="global_pool='token'"):
        DistilledVisionTransformer(global_pool='avg', **KW)
    with pytest.raises(ValueError, match='eval_output'):
        DistilledVisionTransformer(eval_output='max', **KW)


@pytest.mark.parametrize('position', ['end', 'deit'])
def test_gd_checkpoint_loads_into_distilled_student(position: str) -> None:
    plain = VisionTransformer(**{**KW, 'num_classes': 0})
    m = DistilledVisionTransformer(dist_token_position=position, **KW)
    with pytest.raises(CheckpointError, match='dist_token'):
        load_pretrained(m, plain.state_dict(), use='backbone')
    report = load_pretrained(m, plain.state_dict(), use='backbone', allow_missing=DIST_KEYS)
    assert 'dist_token' in report.missing_allowed
    torch.testing.assert_close(m.blocks[1].mlp.fc2.weight, plain.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(m.pos_embed, plain.pos_embed)


def test_no_weight_decay_names() -> None:
    assert DistilledVisionTransformer(**KW).no_weight_decay() == {
        'pos_embed',
        'cls_token',
        'dist_token',
    }
    deit = DistilledVisionTransformer(dist_token_position='deit', **KW)
    assert 'dist_pos_embed' in deit.no_weight_decay()


# Literal table (depth 2 -> 4 layer ids, rate 0.75, top scale 1): cls_token / pos_embed /
# patch_embed -> 0, block k -> k + 1, norm / heads / dist token -> 3; no weight decay on 1-D
# params and no_weight_decay() names.
EXPECTED = {
    'cls_token': (0, 0.421875, 0.0),
    'pos_embed': (0, 0.421875, 0.0),
    'dist_pos_embed': (0, 0.421875, 0.0),
    'patch_embed.proj.weight': (0, 0.421875, 0.05),
    'patch_embed.proj.bias': (0, 0.421875, 0.0),
    'blocks.0.attn.qkv.weight': (1, 0.5625, 0.05),
    'blocks.0.norm1.weight': (1, 0.5625, 0.0),
    'blocks.1.mlp.fc2.weight': (2, 0.75, 0.05),
    'blocks.1.mlp.fc2.bias': (2, 0.75, 0.0),
    'norm.weight': (3, 1.0, 0.0),
    'head.weight': (3, 1.0, 0.05),
    'head.bias': (3, 1.0, 0.0),
    'head_dist.weight': (3, 1.0, 0.05),
    'head_dist.bias': (3, 1.0, 0.0),
    'dist_token': (3, 1.0, 0.0),
}


@pytest.mark.parametrize('prefix', ['backbone.', 'student.backbone.'])
def test_layer_decay_table(prefix: str) -> None:
    from g2sd.distill import DistillModel

    clf = ViTClassifier(
        backbone=DistilledVisionTransformer(dist_token_position='deit', **KW),
    )
    model = clf
    if prefix.startswith('student'):
        teacher = VisionTransformer(**{**KW, 'global_pool': 'avg'})
        model = DistillModel(
            student=clf,
            teacher=teacher,
            allow_random_teacher=True,
            distill=[
                dict(
                    student='backbone.head_dist', teacher='head', loss=dict(type='g2sd.HardKDLoss')
                )
            ],
        )
    groups = layer_decay_param_groups(model, base_lr=4e-3, weight_decay=0.05, layer_decay_rate=0.75)
    got = {}
    for g in groups:
        for name in g['names']:
            got[name] = (g['layer_id'], g['lr_scale'], g['weight_decay'])
            assert g['lr'] == pytest.approx(4e-3 * g['lr_scale'])
    for name, (lid, scale, wd) in EXPECTED.items():
        assert got[prefix + name][0] == lid, name
        assert got[prefix + name][1] == pytest.approx(scale), name
        assert got[prefix + name][2] == wd, name
    assert len(got) == sum(1 for _ in model.parameters())  # every trainable parameter
