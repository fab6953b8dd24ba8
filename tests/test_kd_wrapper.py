"""The SD wrapper g2sd.DistillModel: frozen out-of-tree teacher, losses, checkpoints."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from g2sd.checkpoint import CheckpointError, save_state_dict
from g2sd.cls import ClsDataPreprocessor, DistilledVisionTransformer, ViTClassifier
from g2sd.distill import DistillModel, plain_student_state_dict, select
from g2sd.models import VisionTransformer

K = 5
S_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=K)
T_KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=K)
HARD = [
    dict(
        student='backbone.head_dist',
        teacher='head',
        loss=dict(type='g2sd.HardKDLoss', loss_weight=0.5),
    )
]


def make_student(mixup: bool = True) -> ViTClassifier:
    pre = ClsDataPreprocessor(
        num_classes=K,
        mixup_alpha=0.8 if mixup else 0.0,
        cutmix_alpha=1.0 if mixup else 0.0,
        label_smoothing=0.1,
    )
    return ViTClassifier(backbone=DistilledVisionTransformer(**S_KW), data_preprocessor=pre)


def make_teacher() -> VisionTransformer:
    return VisionTransformer(global_pool='avg', **T_KW)


@pytest.fixture
def teacher_file(tmp_path: Path) -> tuple[Path, VisionTransformer]:
    torch.manual_seed(1)
    teacher = make_teacher()
    path = tmp_path / 'teacher.pth'
    # MAE fine-tuned layout: {'model': ..., 'args': Namespace}, fc_norm + head, no norm.
    torch.save({'model': teacher.state_dict(), 'args': argparse.Namespace(lr=1.0)}, path)
    return path, teacher


def make_model(teacher_file, distill=HARD, **kw) -> DistillModel:
    path, _ = teacher_file
    return DistillModel(
        student=make_student(kw.pop('mixup', True)),
        teacher=dict(type='g2sd.VisionTransformer', global_pool='avg', **T_KW),
        teacher_checkpoint=str(path),
        teacher_use='encoder_teacher',
        student_loss_weight=0.5,
        distill=distill,
        **kw,
    )


def batch(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(inputs=torch.randn(n, 3, 32, 32, generator=g), data_samples=torch.arange(n) % K)


def test_teacher_loaded_frozen_outside_tree(teacher_file) -> None:
    model = make_model(teacher_file)
    _, ref = teacher_file
    t = model.teacher
    torch.testing.assert_close(t.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    assert model.teacher_checkpoint == str(teacher_file[0])
    assert all(not p.requires_grad for p in t.parameters())
    model.train()
    assert not t.training and all(not m.training for m in t.modules())
    assert model.student.training
    assert not any(k.startswith(('teacher', '_teacher')) for k in model.state_dict())
    ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in ids for p in t.parameters())
    assert not any(m is t for m in model.modules())
    # An optimizer over model.parameters() (what mmengine / DDP see) has no teacher tensor.
    opt = torch.optim.AdamW(model.parameters())
    assert not {id(p) for g in opt.param_groups for p in g['params']} & {
        id(p) for p in t.parameters()
    }
    # .to() moves the teacher along; EMA-style deep copies share (do not duplicate) it.
    model.to(torch.float64)
    assert t.pos_embed.dtype == torch.float64
    clone = copy.deepcopy(model)
    assert clone.teacher is t and clone.student is not model.student


def test_missing_or_wrong_teacher_checkpoint_fails_at_build(tmp_path: Path, teacher_file) -> None:
    with pytest.raises(CheckpointError, match='does not exist'):
        make_model((tmp_path / 'nope.pth', None))
    wrong = VisionTransformer(global_pool='avg', **{**T_KW, 'embed_dim': 24})
    path = tmp_path / 'wrong.pth'
    torch.save(wrong.state_dict(), path)
    with pytest.raises(CheckpointError, match='shape mismatches'):
        make_model((path, None))
    no_head = {k: v for k, v in teacher_file[1].state_dict().items() if not k.startswith('head')}
    torch.save(no_head, path)
    with pytest.raises(CheckpointError, match='missing keys'):
        make_model((path, None))
    with pytest.raises(ValueError, match='teacher_checkpoint is required'):
        DistillModel(student=make_student(), teacher=make_teacher(), distill=HARD)


def test_teacher_checkpoint_formats(tmp_path: Path, teacher_file) -> None:
    _, ref = teacher_file
    # Our own classifier checkpoint (mmengine layout, 'backbone.' keys) loads into a bare ViT.
    clf = ViTClassifier(backbone=ref)
    path = tmp_path / 'clf.pth'
    torch.save({'state_dict': clf.state_dict(), 'meta': {}}, path)
    model = make_model((path, None))
    torch.testing.assert_close(model.teacher.head.weight, ref.head.weight)
    # A timm-style ViT (token pooling, final norm, head).
    timm_like = VisionTransformer(global_pool='token', **T_KW)
    save_state_dict(timm_like.state_dict(), tmp_path / 't.safetensors')
    m2 = DistillModel(
        student=make_student(),
        teacher=dict(type='g2sd.VisionTransformer', global_pool='token', **T_KW),
        teacher_checkpoint=str(tmp_path / 't.safetensors'),
        teacher_use='encoder_teacher',
        distill=HARD,
    )
    torch.testing.assert_close(m2.teacher.norm.weight, timm_like.norm.weight)


def test_teacher_sees_the_same_mixed_images(teacher_file) -> None:
    model = make_model(teacher_file)
    model.train()
    seen: dict[str, torch.Tensor] = {}
    model.teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__('teacher', a[0].clone()))
    model.student.backbone.register_forward_pre_hook(
        lambda m, a: seen.__setitem__('student', a[0].clone())
    )
    torch.manual_seed(0)
    raw = batch()
    data = model.data_preprocessor(copy.deepcopy(raw), True)
    assert not torch.allclose(data['inputs'], raw['inputs'])  # mixed
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_cls', 'distill.loss_hard_kd'}
    torch.testing.assert_close(seen['teacher'], data['inputs'], rtol=0, atol=0)
    torch.testing.assert_close(seen['student'], data['inputs'], rtol=0, atol=0)


def test_loss_values_with_mixup_targets(teacher_file) -> None:
    model = make_model(teacher_file)
    model.train()
    torch.manual_seed(0)
    np.random.seed(0)
    with torch.no_grad():  # MAE's head init (std 2e-5) gives near-uniform logits
        model.student.backbone.head.weight.normal_(0, 1.0)
    data = model.data_preprocessor(batch(), True)
    targets = data['data_samples']
    assert targets.shape == (4, K)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert ((targets > 0.1).sum(1) >= 2).all()  # two mixed classes per row
    losses = model(**data, mode='loss')
    with torch.no_grad():
        cls_logits, dist_logits = model.student.backbone(data['inputs'])
        t_logits = model.teacher(data['inputs'])
    ref_cls = 0.5 * (-(targets * F.log_softmax(cls_logits, -1)).sum(-1)).mean()
    ref_kd = 0.5 * F.cross_entropy(dist_logits, t_logits.argmax(-1))
    torch.testing.assert_close(losses['loss_cls'].detach(), ref_cls)
    torch.testing.assert_close(losses['distill.loss_hard_kd'].detach(), ref_kd)
    # The soft targets matter: CE with the hard labels gives another value.
    hard = 0.5 * F.cross_entropy(cls_logits, batch()['data_samples'])
    assert not torch.allclose(ref_cls, hard)


def test_train_step_updates_student_only(teacher_file) -> None:
    from mmengine.optim import OptimWrapper

    model = make_model(teacher_file)
    model.train()
    t_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    s_before = model.student.backbone.head_dist.weight.clone()
    ow = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    log = model.train_step(batch(), ow)
    assert {'loss', 'loss_cls', 'distill.loss_hard_kd'} <= set(log)
    assert not torch.equal(s_before, model.student.backbone.head_dist.weight)
    for k, v in model.teacher.state_dict().items():
        torch.testing.assert_close(v, t_before[k], rtol=0, atol=0)


def test_weight_scale_and_stop(teacher_file) -> None:
    model = make_model(teacher_file, mixup=False)
    data = model.data_preprocessor(batch(), True)
    full = model(**data, mode='loss')['distill.loss_hard_kd']
    model.distill_weight_scale = 0.25
    assert model(**data, mode='loss')['distill.loss_hard_kd'].item() == pytest.approx(
        0.25 * full.item(), rel=1e-6
    )
    calls = []
    model.teacher.register_forward_hook(lambda *a: calls.append(1))
    model.distillation_stopped = True
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_cls'} and not calls


def test_predict_uses_student_alone(teacher_file) -> None:
    model = make_model(teacher_file)
    model.eval()
    calls = []
    model.teacher.register_forward_hook(lambda *a: calls.append(1))
    data = model.data_preprocessor(batch(), False)
    out = model(**data, mode='predict')
    assert not calls
    assert [o['gt_label'].item() for o in out] == [0, 1, 2, 3]
    # Independent: both heads by hand (train mode returns them; no dropout), averaged.
    bb = model.student.backbone
    with torch.no_grad():
        x = data['inputs']
        bb.train()
        cls_logits, dist_logits = bb(x)
        bb.eval()
    expected = ((cls_logits + dist_logits) / 2).softmax(-1)
    torch.testing.assert_close(torch.stack([o['pred_score'] for o in out]), expected)
    model.predict_with_teacher = True
    t_out = model(**data, mode='predict')
    with torch.no_grad():
        t_logits = model.teacher(x)
    torch.testing.assert_close(torch.stack([o['pred_score'] for o in t_out]), t_logits.softmax(-1))


def test_plain_student_checkpoints_load_and_export(teacher_file) -> None:
    from g2sd.checkpoint import CheckpointError, load_pretrained

    model = make_model(teacher_file)
    other = make_student()
    # mmengine-style student checkpoint (backbone.* keys) and a plain backbone state dict,
    # through the one loader (use='whole' nests them under student. / student.backbone.)
    report = load_pretrained(model, other.state_dict(), use='whole')
    assert len(report.loaded) == len(model.state_dict())
    torch.testing.assert_close(model.student.backbone.dist_token, other.backbone.dist_token)
    other2 = make_student()
    load_pretrained(model, other2.backbone.state_dict(), use='whole')
    torch.testing.assert_close(model.student.backbone.head.weight, other2.backbone.head.weight)
    exported = model.export_student()
    assert set(exported) == set(other.backbone.state_dict())
    fresh = make_student()
    load_pretrained(fresh, exported, use='whole')  # plain keys -> backbone.*
    torch.testing.assert_close(fresh.backbone.head_dist.bias, model.student.backbone.head_dist.bias)
    assert set(plain_student_state_dict(model.state_dict())) == set(other.state_dict())
    # a plain file missing a tensor is refused, naming it
    partial = dict(exported)
    del partial['dist_token']
    with pytest.raises(CheckpointError, match=r'missing keys \(1\): student\.backbone\.dist_token'):
        load_pretrained(model, partial, use='whole')


def test_adapter_reaches_optimizer_and_gradient(teacher_file) -> None:
    distill = [
        dict(
            name='feat',
            student='backbone.patch_embed',  # (B, 32, 4, 4)
            teacher='patch_embed',  # (B, 48, 4, 4)
            adapter=dict(type='g2sd.ConvAdapter', in_channels=32, out_channels=48, kernel_size=3),
            loss=dict(type='g2sd.FeatureLoss', loss_type='mse'),
        )
    ]
    model = make_model(teacher_file, distill=distill, mixup=False)
    names = [n for n, _ in model.named_parameters()]
    assert 'adapters.feat.weight' in names
    data = model.data_preprocessor(batch(), True)
    model.zero_grad()
    losses = model(**data, mode='loss')
    losses['distill.loss_feat'].backward()
    assert model.adapters.feat.weight.grad is not None
    assert model.student.backbone.patch_embed.proj.weight.grad is not None
    assert model.student.backbone.blocks[0].attn.qkv.weight.grad is None  # not on the path
    assert all(p.grad is None for p in model.teacher.parameters())


def test_nkd_item_gets_targets(teacher_file) -> None:
    distill = [dict(student='backbone.head', teacher='head', loss=dict(type='g2sd.NKDLoss'))]
    model = make_model(teacher_file, distill=distill, mixup=False)
    data = model.data_preprocessor(batch(), True)
    losses = model(**data, mode='loss')
    with torch.no_grad():
        s, _ = model.student.backbone(data['inputs'])
        t = model.teacher(data['inputs'])
    # Official NKD_loss.py (T=1, alpha=1): target term weighted by the teacher's target
    # probability; non-target term with the target logit pushed down by 1000.
    y = data['data_samples'].argmax(-1)
    onehot = F.one_hot(y, K).float()
    log_p_y = (F.log_softmax(s, -1) * onehot).sum(-1)
    w_y = (F.softmax(t, -1) * onehot).sum(-1)
    non = (F.softmax(t - 1000 * onehot, -1) * F.log_softmax(s - 1000 * onehot, -1)).sum(-1)
    ref = -(w_y * log_p_y).mean() - non.mean()
    torch.testing.assert_close(losses['distill.loss_nkd'].detach(), ref, rtol=1e-5, atol=1e-6)


def test_bad_items_fail_at_build(teacher_file) -> None:
    with pytest.raises(ValueError, match="no module 'backbone.head_distt'"):
        make_model(teacher_file, distill=[{**HARD[0], 'student': 'backbone.head_distt'}])
    with pytest.raises(ValueError, match='unknown keys'):
        make_model(teacher_file, distill=[{**HARD[0], 'weight': 1.0}])
    with pytest.raises(ValueError, match='distinct names'):
        make_model(teacher_file, distill=[HARD[0], HARD[0]])


def test_select() -> None:
    rec = ([1, 2], (3, [4, 5]))
    assert select(rec, None) is rec
    assert select(rec, 0) == [1, 2]
    assert select(rec, (1, 1, 0)) == 4
    with pytest.raises(ValueError, match='cannot index'):
        select(rec, (0, 5))
