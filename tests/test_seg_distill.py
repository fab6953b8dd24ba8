"""CWD segmentation distillation (G2SD seg SD) through g2sd.DistillModel on mmseg 1.

The tiny UperNets of ``tests/seg_tiny.py`` with patch-8 backbones (32 px crops: 4x4 tokens,
decoder logits 16x16, i.e. before the upsampling to the image): a 32-d student and a 48-d
teacher loaded strictly from a saved state dict (``teacher_use='whole'``). The expected CWD
value is the formula of ``G2SD_seg_dis/src/distillation/losses/cwd.py`` written out again
here on the recorded student logits and independently recomputed teacher logits.
"""

from __future__ import annotations

import types

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from seg_tiny import TINY_CLASSES, tiny_backbone, tiny_segmentor

import g2sd.distill  # noqa: F401
import g2sd.engine  # noqa: F401
import g2sd.seg  # noqa: F401
from g2sd.distill.base import build_model, resolve_teacher_forward
from g2sd.distill.specific import DistillModel
from g2sd.seg import decode_teacher_forward

K = TINY_CLASSES
CWD = dict(
    name='cwd',
    student='decode_head.conv_seg',
    teacher='decode_head.conv_seg',
    loss=dict(type='g2sd.ChannelWiseDivergence', tau=1.0, loss_weight=3.0),
)


def _student_cfg(deterministic: bool = False, **kw) -> ConfigDict:  # noqa: ANN003
    """The 32-d student; ``deterministic``: drop path 0 and head dropout 0."""
    drop = dict(drop_path_rate=0.0) if deterministic else {}
    cfg = tiny_segmentor(backbone=tiny_backbone(patch_size=8, **drop), **kw)
    if deterministic:
        cfg['decode_head']['dropout_ratio'] = 0.0
        cfg['auxiliary_head']['dropout_ratio'] = 0.0
    return ConfigDict(cfg)  # mmseg reads test_cfg.mode as an attribute


def _teacher_cfg() -> ConfigDict:
    return ConfigDict(
        tiny_segmentor(
            embed_dim=48, backbone=tiny_backbone(embed_dim=48, num_heads=3, patch_size=8)
        )
    )


def _teacher_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    teacher = build_model(_teacher_cfg(), 'teacher')
    teacher.init_weights()
    return {k: v.clone() for k, v in teacher.state_dict().items()}


def _build(teacher_state: dict, **student_kw) -> DistillModel:  # noqa: ANN003
    torch.manual_seed(0)
    return DistillModel(
        student=_student_cfg(**student_kw),
        teacher=_teacher_cfg(),
        teacher_checkpoint=teacher_state,
        teacher_use='whole',
        teacher_forward='g2sd.seg.decode_teacher_forward',
        distill=[CWD],
    )


def _batch(h: int = 32, w: int = 32, n: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 255, (1, h, w), dtype=torch.uint8, generator=g))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        label = torch.randint(0, K, (1, h, w), generator=g)
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def cwd_formula(s: torch.Tensor, t: torch.Tensor, tau: float = 1.0, w: float = 3.0):
    """w tau^2 / (N C) sum_{n, c, hw} -p_t log p_s (softmax over H W), written out again."""
    n, c = s.shape[:2]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for k in range(c):
            p_t = torch.softmax(t[i, k].double().reshape(-1) / tau, 0)
            log_p_s = torch.log_softmax(s[i, k].double().reshape(-1) / tau, 0)
            total = total - (p_t * log_p_s).sum()
    return w * tau * tau * total / (n * c)


@pytest.fixture(scope='module')
def teacher_state() -> dict[str, torch.Tensor]:
    return _teacher_state()


@pytest.fixture(scope='module')
def model(teacher_state: dict) -> DistillModel:
    return _build(teacher_state)


# --------------------------------------------------------------- teacher forward
def test_config_string_resolves() -> None:
    assert resolve_teacher_forward('g2sd.seg.decode_teacher_forward') is decode_teacher_forward


def test_teacher_forward_refuses_other_models() -> None:
    with pytest.raises(TypeError, match='Linear'):
        decode_teacher_forward(torch.nn.Linear(2, 2), torch.zeros(1, 2))


def test_teacher_loaded_from_the_saved_state(model: DistillModel, teacher_state: dict) -> None:
    got = model.teacher.state_dict()
    assert set(got) == set(teacher_state)
    for k, v in teacher_state.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def test_teacher_outside_tree_and_optimizer(model: DistillModel) -> None:
    from mmengine.optim import build_optim_wrapper

    sd = model.state_dict()
    assert sd and all(k.startswith(('student.', 'data_preprocessor.')) for k in sd), sorted(
        k for k in sd if not k.startswith('student.')
    )
    params = {id(p) for p in model.parameters()}
    assert not any(id(p) in params for p in model.teacher.parameters())
    ow = build_optim_wrapper(
        model,
        dict(
            constructor='g2sd.LayerDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            paramwise_cfg=dict(layer_decay_rate=0.65),
        ),
    )
    in_opt = {id(p) for g in ow.optimizer.param_groups for p in g['params']}
    assert not any(id(p) in in_opt for p in model.teacher.parameters())
    assert all(id(p) in in_opt for p in model.student.parameters())
    model.train()
    assert model.student.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_teacher_runs_only_backbone_neck_decode_head(
    model: DistillModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError('the teacher must not run this')

    teacher = model.teacher
    monkeypatch.setattr(teacher.auxiliary_head, 'forward', boom)
    for name in ('loss', 'predict', 'encode_decode', '_forward', 'slide_inference'):
        monkeypatch.setattr(teacher, name, boom)
    for name in ('loss', 'predict', 'loss_by_feat', 'predict_by_feat'):
        monkeypatch.setattr(teacher.decode_head, name, boom)
    model.train()
    data = model.data_preprocessor(_batch(), True)
    logits = model.run_teacher(data['inputs'], data['data_samples'])
    # decoder resolution: level 0 of the neck, 4x the 4x4 token grid, not the 32 px input
    assert logits.shape == (2, K, 16, 16) and not logits.requires_grad
    # and the whole loss step works with the auxiliary head patched to raise
    losses = model.loss(data['inputs'], data['data_samples'])
    assert 'distill.loss_cwd' in losses


# ---------------------------------------------------------------- the loss step
def test_loss_step_value_and_gradients(model: DistillModel) -> None:
    """One DistillModel.loss: decode / aux CE + CWD equal to the formula; backward."""
    model.train()
    data = model.data_preprocessor(_batch(seed=3), True)
    inputs, samples = data['inputs'], data['data_samples']
    conv_seg = model.student.decode_head.conv_seg
    calls: list[torch.Tensor] = []

    orig = type(conv_seg).forward

    def counting(self, x):  # noqa: ANN001, ANN202
        out = orig(self, x)
        calls.append(out.detach().clone())
        return out

    conv_seg.forward = types.MethodType(counting, conv_seg)
    try:
        losses = model.loss(inputs, samples)
    finally:
        del conv_seg.forward
    assert len(calls) == 1  # recorded from the student's own pass, not recomputed
    assert calls[0].shape == (2, K, 16, 16)
    assert {'decode.loss_ce', 'aux.loss_ce', 'distill.loss_cwd'} <= set(losses)
    assert losses['decode.loss_ce'] > 0 and losses['aux.loss_ce'] > 0

    with torch.no_grad():  # teacher in eval: deterministic, recomputed by hand
        t = model.teacher.decode_head(model.teacher.extract_feat(inputs))
    ref = cwd_formula(calls[0], t)
    torch.testing.assert_close(
        losses['distill.loss_cwd'].detach().double(), ref, rtol=1e-5, atol=1e-6
    )

    total, log_vars = model.parse_losses(losses)
    assert 'distill.loss_cwd' in log_vars
    model.zero_grad(set_to_none=True)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []  # DDP without find_unused_parameters
    assert model.student.decode_head.conv_seg.weight.grad.abs().sum() > 0
    assert model.student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_student_logits_match_a_deterministic_recomputation(teacher_state: dict) -> None:
    """No dropout / drop path: the recorded student logits are its decode head's output."""
    model = _build(teacher_state, deterministic=True)
    model.train()
    data = model.data_preprocessor(_batch(seed=4), True)
    inputs = data['inputs']
    losses = model.loss(inputs, data['data_samples'])
    with torch.no_grad():  # BN train mode uses batch statistics again: same logits
        s = model.student.decode_head(model.student.extract_feat(inputs))
        t = model.teacher.decode_head(model.teacher.extract_feat(inputs))
    torch.testing.assert_close(
        losses['distill.loss_cwd'].detach().double(), cwd_formula(s, t), rtol=1e-5, atol=1e-6
    )


def test_teacher_runs_in_the_callers_autocast(model: DistillModel) -> None:
    """The wrapper adds no autocast of its own: the optimizer wrapper's context applies."""
    data = model.data_preprocessor(_batch(), True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model.run_teacher(data['inputs'])
    assert logits.dtype == torch.bfloat16  # conv_seg ran in bf16
    assert model.run_teacher(data['inputs']).dtype == torch.float32


# ---------------------------------------------------------------------- predict
def test_predict_is_the_students_slide_inference(teacher_state: dict) -> None:
    """45x38 images (not multiples of the stride), slide crop 32 stride 24: 2x2 windows."""
    model = _build(teacher_state, mode='slide', crop=32, stride=24)
    model.eval()

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError('predict must use the student')

    model.teacher.forward = boom
    model.teacher.extract_feat = boom
    calls = []
    conv_seg = model.student.decode_head.conv_seg
    conv_seg.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    batch = _batch(h=45, w=38, n=2, seed=5)
    with torch.no_grad():
        out = model.test_step(batch)
    assert len(out) == 2 and all(isinstance(o, SegDataSample) for o in out)
    assert calls == [(2, K, 16, 16)] * 4  # 2 x 2 windows of 32 px, batched
    for o in out:
        assert o.pred_sem_seg.data.shape == (1, 45, 38)
        assert o.seg_logits.data.shape == (K, 45, 38)
        assert o.pred_sem_seg.data.max() < K
    # the same as the plain student
    with torch.no_grad():
        data = model.data_preprocessor(_batch(h=45, w=38, n=2, seed=5), False)
        ref = model.student.predict(data['inputs'], data['data_samples'])
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.seg_logits.data, r.seg_logits.data)
        assert torch.equal(o.pred_sem_seg.data, r.pred_sem_seg.data)
