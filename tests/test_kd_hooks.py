"""Runner hooks of the distillation wrapper (weight per step, stop point, teacher val)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub
from torch import nn

from g2sd.engine.hooks import (
    DistillWeightHook,
    StopDistillHook,
    distill_weight_factor,
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.distill_weight_scale = 1.0
        self.distillation_stopped = False
        self.predict_with_teacher = False


def fake_runner(model: nn.Module, it: int = 0, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        model=model,
        iter=it,
        epoch=epoch,
        message_hub=MessageHub.get_instance('test_kd_hooks'),
        logger=logging.getLogger('test_kd_hooks'),
    )


def test_linear_warmup_values_per_iteration() -> None:
    model = Toy()
    hook = DistillWeightHook(warmup=4)
    runner = fake_runner(model)
    hook.before_train(runner)
    got = []
    for it in range(6):
        runner.iter = it
        hook.before_train_iter(runner, it)
        got.append(model.distill_weight_scale)
    assert got == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert runner.message_hub.get_scalar('train/distill_weight_scale').current() == 1.0


def test_warmup_then_decay_by_epoch() -> None:
    model = Toy()
    hook = DistillWeightHook(
        warmup=2, by_epoch=True, start_factor=0.5, decay_begin=4, decay_end=6, end_factor=0.2
    )
    runner = fake_runner(model)
    got = []
    for ep in range(8):
        runner.epoch = ep
        hook.before_train_epoch(runner)
        hook.before_train_iter(runner, 0)  # no effect when by_epoch
        got.append(round(model.distill_weight_scale, 6))
    assert got == [0.5, 0.75, 1.0, 1.0, 1.0, 0.6, 0.2, 0.2]


def test_cosine_factor_and_errors() -> None:
    assert distill_weight_factor(1, warmup=2, warmup_type='cosine') == pytest.approx(0.5)
    assert distill_weight_factor(0, warmup=2, warmup_type='cosine') == 0.0
    with pytest.raises(ValueError, match='inside the warm-up'):
        DistillWeightHook(warmup=10, decay_begin=5)
    with pytest.raises(ValueError, match='warmup_type'):
        DistillWeightHook(warmup_type='step')
    with pytest.raises(TypeError, match='distill_weight_scale'):
        DistillWeightHook().before_train(fake_runner(nn.Linear(1, 1)))


def test_stop_distill_by_epoch_and_iter() -> None:
    model = Toy()
    hook = StopDistillHook(stop_epoch=2)
    runner = fake_runner(model)
    hook.before_train(runner)
    for ep in range(2):
        runner.epoch = ep
        hook.before_train_epoch(runner)
        assert not model.distillation_stopped
    runner.epoch = 2
    hook.before_train_epoch(runner)
    assert model.distillation_stopped

    model = Toy()
    hook = StopDistillHook(stop_iter=3)
    runner = fake_runner(model, it=3)  # resumed past the stop point
    hook.before_train(runner)
    assert model.distillation_stopped
    with pytest.raises(ValueError, match='exactly one'):
        StopDistillHook()
    with pytest.raises(ValueError, match='exactly one'):
        StopDistillHook(stop_epoch=1, stop_iter=1)


def test_teacher_val_hook_in_a_real_runner(tmp_path) -> None:
    """TeacherValHook evaluates the real teacher of a DistillModel with the real metric."""
    from mmengine.runner import Runner

    from g2sd.cls import ClsDataPreprocessor, DistilledVisionTransformer, ViTClassifier
    from g2sd.distill import DistillModel
    from g2sd.models import VisionTransformer

    kw = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    torch.manual_seed(0)
    teacher = VisionTransformer(global_pool='avg', **kw)
    with torch.no_grad():
        teacher.head.weight.normal_(0, 1.0)
    model = DistillModel(
        student=ViTClassifier(
            backbone=DistilledVisionTransformer(**kw),
            data_preprocessor=ClsDataPreprocessor(num_classes=3),
        ),
        teacher=teacher,
        allow_random_teacher=True,
        distill=[
            dict(student='backbone.head_dist', teacher='head', loss=dict(type='g2sd.HardKDLoss'))
        ],
    )
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(10, 3, 16, 16, generator=g)
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    data = [dict(inputs=xs[i], data_samples=labels[i]) for i in range(10)]
    with torch.no_grad():
        t_pred = teacher(xs).argmax(-1).tolist()
    expected = 100.0 * sum(p == y for p, y in zip(t_pred, labels)) / 10
    loader = dict(
        dataset=data,
        batch_size=4,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='default_collate'),
    )
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        train_dataloader=loader,
        val_dataloader=loader,
        val_cfg=dict(),
        val_evaluator=dict(type='g2sd.TopKAccuracy', topk=(1,)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        train_cfg=dict(by_epoch=False, max_iters=1, val_interval=100),
        custom_hooks=[dict(type='g2sd.TeacherValHook')],
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1)),
        default_scope='g2sd',
    )
    runner.train()
    got = runner.message_hub.get_scalar('val/teacher/top1').current()
    assert got == pytest.approx(expected)
    assert model.predict_with_teacher is False


def test_hooks_work_in_a_real_runner(tmp_path) -> None:
    """DistillWeightHook + StopDistillHook drive DistillModel inside mmengine's Runner."""
    from mmengine.runner import Runner

    from g2sd.cls import ClsDataPreprocessor, DistilledVisionTransformer, ViTClassifier
    from g2sd.distill import DistillModel
    from g2sd.models import VisionTransformer

    kw = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    model = DistillModel(
        student=ViTClassifier(
            backbone=DistilledVisionTransformer(**kw),
            data_preprocessor=ClsDataPreprocessor(num_classes=3),
        ),
        teacher=VisionTransformer(global_pool='avg', **kw),
        allow_random_teacher=True,
        distill=[
            dict(student='backbone.head_dist', teacher='head', loss=dict(type='g2sd.HardKDLoss'))
        ],
    )
    seen = []
    orig = model.compute_distill_losses

    def spy(data_samples):
        seen.append(model.distill_weight_scale)
        return orig(data_samples)

    model.compute_distill_losses = spy
    data = [dict(inputs=torch.randn(3, 16, 16), data_samples=i % 3) for i in range(8)]
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=data,
            batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=6),
        custom_hooks=[
            dict(type='g2sd.DistillWeightHook', warmup=4),
            dict(type='g2sd.StopDistillHook', stop_iter=5),
        ],
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1)),
        default_scope='g2sd',
    )
    runner.train()
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0]  # iteration 5 ran without distillation
    assert model.distillation_stopped
