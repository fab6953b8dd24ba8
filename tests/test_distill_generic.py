"""Generic distillers: each loss equals an independent computation; teacher hygiene."""

import pytest
import torch
import torch.nn.functional as F

from g2sd.distill import DMAEDistiller, G2SDDistiller, MAEPretrainer, TinyMIMDistiller
from g2sd.distill.losses import feature_regression_loss, relation_kl
from g2sd.models import MaskedAutoencoderViT, VisionTransformer

ENC = dict(img_size=32, patch_size=8, depth=2)


def mae_cfg(dim=32, heads=2, dec=16, dec_depth=2, dec_heads=2, **kw):
    return dict(
        type='g2sd.MaskedAutoencoderViT',
        embed_dim=dim,
        num_heads=heads,
        decoder_embed_dim=dec,
        decoder_depth=dec_depth,
        decoder_num_heads=dec_heads,
        **ENC,
        **kw,
    )


def vit_cfg(dim=32, heads=2, **kw):
    return dict(
        type='g2sd.VisionTransformer', embed_dim=dim, num_heads=heads, num_classes=0, **ENC, **kw
    )


def make_g2sd(**kw):
    return G2SDDistiller(
        student=mae_cfg(dim=32, dec=16, pixel_head=False),
        teacher=mae_cfg(dim=48, heads=4, dec=24, dec_depth=4),
        allow_random_teacher=True,
        **kw,
    )


# ----------------------------------------------------------------------- G2SD
def test_smooth_l1_beta2_formula_on_fixed_tensors():
    pred = torch.tensor([[[0.5, -3.0, 1.0]], [[2.5, 0.0, -0.25]]])
    target = torch.tensor([[[0.0, 0.0, 0.0]], [[0.0, 1.9, 0.0]]])
    d = (pred - target).abs()
    expected = torch.where(d < 2.0, d**2 / 4.0, d - 1.0).mean()
    torch.testing.assert_close(feature_regression_loss(pred, target, 'smooth_l1', 2.0), expected)
    # token selection: mean over the selected tokens and all channels
    w = torch.tensor([[1.0], [0.0]])
    torch.testing.assert_close(
        feature_regression_loss(pred, target, 'smooth_l1', 2.0, w),
        torch.where(d < 2.0, d**2 / 4.0, d - 1.0)[0].mean(),
    )
    with pytest.raises(ValueError, match='loss_type'):
        feature_regression_loss(pred, target, 'cosine')


def _record(module, name, store):
    fn = getattr(module, name)

    def wrapped(*a, **k):
        out = fn(*a, **k)
        store.append(out)
        return out

    setattr(module, name, wrapped)


def _elementwise(d, loss_type, beta):
    """Official G2SD: F.smooth_l1_loss(beta) / MSE / L1 per element of |pred - target|."""
    if loss_type == 'smooth_l1':
        return torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    return d**2 if loss_type == 'mse' else d


@pytest.mark.parametrize(
    'token_set, loss_type, beta, k',
    [
        ('all', 'smooth_l1', 2.0, 3),
        ('masked', 'smooth_l1', 2.0, 3),
        ('all', 'smooth_l1', 0.5, 3),
        ('all', 'mse', 2.0, 3),
        ('all', 'l1', 2.0, 1),
    ],
)
def test_g2sd_loss_equals_independent_computation(token_set, loss_type, beta, k):
    torch.manual_seed(0)
    model = make_g2sd(token_set=token_set, target_block=k, loss_type=loss_type, beta=beta)
    t, s = model.teacher, model.student
    t_enc, s_enc, t_dec, s_dec = [], [], [], []
    _record(t, 'forward_encoder', t_enc)
    _record(s, 'forward_encoder', s_enc)
    _record(t, 'forward_decoder', t_dec)
    _record(s, 'forward_decoder', s_dec)
    imgs = torch.randn(3, 3, 32, 32)
    loss = model(imgs)['loss_gd']

    # identical mask for teacher and student
    assert torch.equal(t_enc[0].mask, s_enc[0].mask)
    assert torch.equal(t_enc[0].ids_keep, s_enc[0].ids_keep)
    assert s_enc[0].mask.sum(1).tolist() == [12.0] * 3

    # independent teacher target: run decoder blocks 0..k-1 by hand from the latent
    with torch.no_grad():
        x = t.decoder_embed(t_enc[0].latent)
        full = torch.cat([x[:, 1:], t.mask_token.expand(3, 16 - 4, -1)], dim=1)
        idx = t_enc[0].ids_restore
        full = torch.stack([full[b, idx[b]] for b in range(3)])
        x = torch.cat([x[:, :1], full], dim=1) + t.decoder_pos_embed
        for blk in t.decoder_blocks[:k]:
            x = blk(x)
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        target = (x - mu) / torch.sqrt(var + 1e-6)
    torch.testing.assert_close(t_dec[0], x)
    pred = model.projector(s_dec[0])
    assert pred.shape == (3, 17, 24)
    d = (pred - target).abs()
    elem = _elementwise(d, loss_type, beta)
    if token_set == 'all':
        expected = elem.mean()
    else:
        m = s_enc[0].mask.bool()
        expected = elem[:, 1:][m].mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_g2sd_teacher_frozen_eval_and_outside_module_tree():
    model = make_g2sd()
    model.train()
    teacher = model.teacher
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    sd_keys = model.state_dict().keys()
    assert all(k.startswith(('student.', 'projector.')) for k in sd_keys)
    param_ids = {id(p) for p in model.parameters()}
    assert not param_ids & {id(p) for p in teacher.parameters()}
    loss = model(torch.randn(2, 3, 32, 32))['loss_gd']
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # moving the distiller moves the teacher too
    model.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64


def test_g2sd_export_student_is_plain_encoder():
    sd = make_g2sd().export_student()
    assert 'blocks.0.attn.qkv.weight' in sd and 'cls_token' in sd
    assert not any(k.startswith(('decoder', 'mask_token', 'projector')) for k in sd)
    VisionTransformer(embed_dim=32, num_heads=2, num_classes=0, **ENC).load_state_dict(sd)


@pytest.mark.parametrize(
    'kw, msg',
    [
        (dict(target_block=5), 'target_block'),
        (dict(loss_type='kl'), 'loss_type'),
        (dict(token_set='visible'), 'token_set'),
        (dict(mask_ratio=1.0), 'mask_ratio'),
    ],
)
def test_g2sd_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_g2sd(**kw)


def test_g2sd_refuses_student_pixel_head_and_missing_checkpoint():
    with pytest.raises(ValueError, match='pixel_head=False'):
        G2SDDistiller(student=mae_cfg(), teacher=mae_cfg(), allow_random_teacher=True)
    with pytest.raises(ValueError, match='teacher_checkpoint'):
        G2SDDistiller(student=mae_cfg(pixel_head=False), teacher=mae_cfg())


# ---------------------------------------------------------------------- D-MAE
@pytest.mark.parametrize('d2', [False, True])
def test_dmae_loss_equals_independent_computation(d2):
    torch.manual_seed(0)
    model = DMAEDistiller(
        student=mae_cfg(dim=32, heads=2),
        teacher=vit_cfg(dim=48, heads=4),
        d2=d2,
        d2_latent_block=1,
        allow_random_teacher=True,
    )
    s, t = model.student, model.teacher
    s_enc = []
    _record(s, 'forward_encoder', s_enc)
    imgs = torch.randn(2, 3, 32, 32)
    out = model(imgs)
    keep = s_enc[0].ids_keep

    def logits(qkv_linear, norm, x, heads):
        b, n, c = x.shape
        qkv = qkv_linear(norm(x)).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        return q @ k.transpose(-2, -1) / (c // heads) ** 0.5

    with torch.no_grad():
        tok = t.patch_embed(imgs).flatten(2).transpose(1, 2) + t.pos_embed[:, 1:]
        tok = torch.stack([tok[b, keep[b]] for b in range(2)])
        x = torch.cat([(t.cls_token + t.pos_embed[:, :1]).expand(2, -1, -1), tok], 1)
        x = t.blocks[0](x)
        t_logits = logits(t.blocks[1].attn.qkv, t.blocks[1].norm1, x, 4)
        tok = s.patch_embed(imgs).flatten(2).transpose(1, 2) + s.pos_embed[:, 1:]
        tok = torch.stack([tok[b, keep[b]] for b in range(2)])
        x = torch.cat([(s.cls_token + s.pos_embed[:, :1]).expand(2, -1, -1), tok], 1)
        if d2:
            x = s.blocks[1](s.blocks[0](x))
            s_logits = logits(model.d2_block.qkv, model.d2_block.norm1, x, 2)
        else:
            x = s.blocks[0](x)
            s_logits = logits(s.blocks[1].attn.qkv, s.blocks[1].norm1, x, 2)
        w = model.head_adapter.weight[:, :, 0, 0]  # (Ht, Hs)
        mapped = torch.einsum('ts,bsij->btij', w, s_logits)
        expected = ((mapped - t_logits) ** 2).mean()
    torch.testing.assert_close(out['loss_attn'], expected, atol=1e-5, rtol=1e-4)
    assert out['loss_mae'].item() > 0
    sum(out.values()).backward()
    assert model.head_adapter.weight.grad is not None


def test_dmae_head_mismatch_needs_adapter():
    with pytest.raises(ValueError, match='head_adapter=True'):
        DMAEDistiller(
            student=mae_cfg(heads=2),
            teacher=vit_cfg(dim=48, heads=4),
            head_adapter=False,
            allow_random_teacher=True,
        )


# -------------------------------------------------------------------- TinyMIM
def test_tinymim_relation_kl_matches_torch_kl_div():
    s = torch.randn(2, 3, 5, 5)
    t = torch.randn(2, 3, 5, 5)
    ref = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction='none').sum(-1).mean()
    torch.testing.assert_close(relation_kl(s, t), ref)


def test_tinymim_loss_equals_independent_computation_and_two_views():
    torch.manual_seed(0)
    model = TinyMIMDistiller(
        student=vit_cfg(dim=32, heads=2, last_block_heads=4),
        teacher=vit_cfg(dim=48, heads=4),
        allow_random_teacher=True,
    )
    s, t = model.student, model.teacher
    t_img, s_img = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    out = model(torch.stack([t_img, s_img], dim=1))

    def qkv_last(vit, img, heads):
        x = vit.patch_embed(img).flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:]
        x = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1), x], 1)
        x = vit.blocks[0](x)
        b, n, c = x.shape
        qkv = vit.blocks[1].attn.qkv(vit.blocks[1].norm1(x))
        return qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)

    with torch.no_grad():
        sq, tq = qkv_last(s, s_img, 4), qkv_last(t, t_img, 4)

        def kl(a_s, b_s, a_t, b_t):
            ps = F.log_softmax(a_s @ b_s.transpose(-2, -1) / a_s.shape[-1] ** 0.5, -1)
            pt = F.softmax(a_t @ b_t.transpose(-2, -1) / a_t.shape[-1] ** 0.5, -1)
            return (pt * (pt.log() - ps)).sum(-1).mean()

        torch.testing.assert_close(
            out['loss_qk'], kl(sq[0], sq[1], tq[0], tq[1]), atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            out['loss_vv'], kl(sq[2], sq[2], tq[2], tq[2]), atol=1e-5, rtol=1e-4
        )
    # parameters the relation loss cannot reach are frozen (no DDP unused-parameter errors)
    sum(out.values()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_tinymim_head_count_must_match_teacher():
    with pytest.raises(ValueError, match='last_block_heads=4'):
        TinyMIMDistiller(
            student=vit_cfg(dim=32, heads=2),
            teacher=vit_cfg(dim=48, heads=4),
            allow_random_teacher=True,
        )


# ------------------------------------------------------------------------ MAE
@pytest.mark.parametrize('norm_pix', [True, False])
def test_mae_pretrainer_loss_is_the_official_formula_and_exports_decoder(norm_pix):
    torch.manual_seed(0)
    model = MAEPretrainer(student=mae_cfg(norm_pix_loss=norm_pix))
    s_enc, s_dec = [], []
    _record(model.student, 'forward_encoder', s_enc)
    _record(model.student, 'forward_decoder', s_dec)
    imgs = torch.randn(2, 3, 32, 32)
    loss = model(imgs)['loss_mae']
    pred, mask = s_dec[0], s_enc[0].mask
    assert mask.sum(1).tolist() == [12.0, 12.0]  # 16 patches, ratio 0.75
    # Official MAE (models_mae.py): patchify 'nchpwq->nhwpqc', per-patch norm with the
    # unbiased variance, MSE per patch, mean over the masked patches.
    x = imgs.reshape(2, 3, 4, 8, 4, 8)
    target = torch.einsum('nchpwq->nhwpqc', x).reshape(2, 16, 8 * 8 * 3)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    expected = (((pred - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    sd = model.export_student()
    assert 'decoder_embed.weight' in sd
    assert model.teacher is None
    MaskedAutoencoderViT(**{k: v for k, v in mae_cfg().items() if k != 'type'}).load_state_dict(sd)


def test_generic_distiller_is_the_mmengine_model():
    """Configs name the distiller directly; keys carry no 'algorithm.' prefix."""
    model = make_g2sd()
    assert all(k.startswith(('student.', 'projector.')) for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert set(model(x, mode='loss')) == {'loss_gd'}
    assert model(torch.stack([x, x], 1), mode='tensor').shape == (2, 17, 32)
    with pytest.raises(NotImplementedError, match='predict'):
        model(x, mode='predict')
    loss, log_vars = model.parse_losses(dict(loss_a=torch.tensor(1.0), loss_b=torch.tensor(2.0)))
    assert float(loss) == 3.0 and set(log_vars) == {'loss', 'loss_a', 'loss_b'}
    with pytest.raises(FloatingPointError, match='resume_hparams=config'):
        model.parse_losses(dict(loss_a=torch.tensor(float('nan'))))
    with pytest.raises(ValueError, match='teacher_forward'):
        make_g2sd(teacher_forward='forward_encoder')
    with pytest.raises(ValueError, match="teacher_use='mae_teacher'"):
        make_g2sd(teacher_use='encoder_teacher')


def test_generic_teacher_from_in_memory_state_dict():
    ref = MaskedAutoencoderViT(
        **{k: v for k, v in mae_cfg(dim=48, heads=4, dec=24, dec_depth=4).items() if k != 'type'}
    )
    model = G2SDDistiller(
        student=mae_cfg(dim=32, dec=16, pixel_head=False),
        teacher=mae_cfg(dim=48, heads=4, dec=24, dec_depth=4),
        teacher_checkpoint=ref.state_dict(),
    )
    assert model.teacher_checkpoint == 'in-memory teacher state dict'
    torch.testing.assert_close(
        model.teacher.decoder_blocks[0].attn.qkv.weight, ref.decoder_blocks[0].attn.qkv.weight
    )


def test_deprecated_pretrain_model_still_wraps_a_distiller():
    from g2sd.engine.model import PretrainModel

    with pytest.warns(DeprecationWarning, match='PretrainModel'):
        model = PretrainModel(
            algorithm=dict(
                type='g2sd.G2SDDistiller',
                student=mae_cfg(dim=32, dec=16, pixel_head=False),
                teacher=mae_cfg(dim=48, heads=4, dec=24, dec_depth=4),
                allow_random_teacher=True,
            )
        )
    assert model.teacher is model.algorithm.teacher
    assert set(model(torch.randn(2, 3, 32, 32), mode='loss')) == {'loss_gd'}
    model.to(torch.float64)
    assert model.teacher.pos_embed.dtype == torch.float64
