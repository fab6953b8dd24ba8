"""g2sd.DistillModel on toy models: recorders, items, teacher_forward, scopes, AMP, DDP.

Expectations are computed by hand from the toy modules' weights, not by the wrapper.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry
from torch import nn

from g2sd.distill import DistillModel
from g2sd.distill import base as distill_base
from g2sd.registry import MODELS


class ToyStudent(BaseModel):
    """``a`` runs twice per pass; ``head`` is invoked through ``.forward()`` (as mmseg does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        h1 = self.a(inputs)
        h2 = self.a(h1)
        out = self.head.forward(self.b(h2))
        if mode == 'loss':
            return {'loss_task': out.pow(2).mean()}
        return out


class ToyTeacher(nn.Module):
    def __init__(self, explode: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)
        self.explode = explode

    def features(self, x):
        return self.b(self.a(x))

    def forward(self, x):
        if self.explode:
            raise RuntimeError('the full teacher forward must not run')
        f = self.features(x)
        return (f, f.sum(-1))


class RecordingLoss(nn.Module):
    """MSE that also remembers its inputs (to check what the wrapper fed it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def forward(self, s, t, **extra):
        self.seen.append((s, t, extra))
        return F.mse_loss(s.float(), t.float())


class ListLoss(nn.Module):
    def forward(self, s, t):
        return [(s - t).pow(2).mean(), (s - t).abs().mean()]


def make(distill, teacher=None, **kw) -> DistillModel:
    return DistillModel(
        student=ToyStudent(),
        teacher=teacher if teacher is not None else ToyTeacher(),
        allow_random_teacher=True,
        distill=distill,
        **kw,
    )


X = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))


def partial_forward(teacher, inputs, data_samples):
    """``'module:fn'`` teacher_forward used by a test below."""
    return teacher.features(inputs) * 2.0


# ------------------------------------------------------------------ recorders
def test_direct_forward_call_index_and_calls_are_recorded() -> None:
    loss = RecordingLoss()
    model = make(
        [
            dict(name='head', student='head', teacher='b', loss=loss),
            dict(
                name='second_a',
                student='a',
                teacher='',
                student_call=1,
                teacher_index=0,
                adapter=nn.Linear(4, 3),
                loss=dict(type='g2sd.FeatureLoss', loss_type='mse'),
            ),
        ]
    )
    losses = model(X, None, mode='loss')
    s, t = model.student, model.teacher
    with torch.no_grad():
        s_head = s.head(s.b(s.a(s.a(X))))
        t_b = t.b(t.a(X))
        second_a = model.adapters['second_a'](s.a(s.a(X)))
    got_s, got_t, extra = loss.seen[0]
    torch.testing.assert_close(got_s, s_head)  # head ran via .forward(): recorded anyway
    torch.testing.assert_close(got_t, t_b)
    assert extra == {}
    torch.testing.assert_close(losses['distill.loss_head'], ((s_head - t_b) ** 2).mean())
    torch.testing.assert_close(
        losses['distill.loss_second_a'], ((second_a - t_b) ** 2).mean(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(losses['loss_task'], s_head.pow(2).mean())
    # the forward wrappers are gone after the pass
    assert 'forward' not in s.head.__dict__ and 'forward' not in s.a.__dict__


def test_call_sets_both_and_extra_records() -> None:
    loss = RecordingLoss()
    model = make(
        [
            dict(
                student='a',
                teacher='a',
                call=0,
                loss=loss,
                extra=dict(
                    mask=dict(source='teacher', module='', index=1),
                    second=dict(source='student', module='a', call=1),
                ),
            )
        ]
    )
    model(X, None, mode='loss')
    s, t = model.student, model.teacher
    _, _, extra = loss.seen[0]
    with torch.no_grad():
        torch.testing.assert_close(extra['mask'], t.b(t.a(X)).sum(-1))
        torch.testing.assert_close(extra['second'], s.a(s.a(X)))
        torch.testing.assert_close(loss.seen[0][0], s.a(X))
    with pytest.raises(ValueError, match='not both'):
        make([dict(student='a', teacher='a', call=0, student_call=1, loss=RecordingLoss())])
    with pytest.raises(RuntimeError, match='ran 1 time'):
        make([dict(student='a', teacher='a', teacher_call=1, loss=RecordingLoss())])(
            X, None, mode='loss'
        )


def test_item_whose_module_never_runs_is_named() -> None:
    model = make(
        [dict(name='never', student='b', teacher='b', loss=RecordingLoss())],
        teacher_forward=lambda t, x, ds: t.a(x),  # the teacher's b never runs
    )
    with pytest.raises(RuntimeError, match=r"never \(teacher 'b'\)"):
        model(X, None, mode='loss')
    assert 'forward' not in model.teacher.a.__dict__  # restored after the failed pass


def test_list_valued_loss_is_scaled_and_summed() -> None:
    model = make([dict(name='both', student='b', teacher='b', loss=ListLoss())])
    model.distill_weight_scale = 0.5
    losses = model(X, None, mode='loss')
    s, t = model.student, model.teacher
    with torch.no_grad():
        d = s.b(s.a(s.a(X))) - t.b(t.a(X))
    expected = [0.5 * d.pow(2).mean(), 0.5 * d.abs().mean()]
    assert isinstance(losses['distill.loss_both'], list)
    for got, exp in zip(losses['distill.loss_both'], expected):
        torch.testing.assert_close(got, exp)
    total, log_vars = model.parse_losses(losses)
    head = s.head(s.b(s.a(s.a(X)))).pow(2).mean()
    torch.testing.assert_close(total, head + expected[0] + expected[1])
    assert set(log_vars) == {'loss', 'loss_task', 'distill.loss_both'}


def test_base_model_teacher_runs_in_tensor_mode() -> None:
    teacher = ToyStudent()  # a BaseModel: called as teacher(inputs, data_samples, mode='tensor')
    loss = RecordingLoss()
    model = make([dict(student='head', teacher='', loss=loss)], teacher=teacher)
    model(X, None, mode='loss')
    with torch.no_grad():
        expected = teacher.head(teacher.b(teacher.a(teacher.a(X))))
    torch.testing.assert_close(loss.seen[0][1], expected)


# ------------------------------------------------------------- teacher_forward
@pytest.mark.parametrize('kind', ['method', 'callable', 'import'])
def test_teacher_forward_runs_part_of_a_teacher_whose_full_forward_fails(kind) -> None:
    spec = {
        'method': 'features',
        'callable': partial_forward,
        'import': f'{__name__}:partial_forward',
    }[kind]
    loss = RecordingLoss()
    model = make(
        [dict(student='b', teacher='', loss=loss)],
        teacher=ToyTeacher(explode=True),
        teacher_forward=spec,
    )
    model(X, None, mode='loss')
    t = model.teacher
    with torch.no_grad():
        expected = t.b(t.a(X)) * (1.0 if kind == 'method' else 2.0)
    torch.testing.assert_close(loss.seen[0][1], expected)


def test_bad_teacher_forward() -> None:
    with pytest.raises(ValueError, match='cannot be imported'):
        make([], teacher_forward='no_such_module_g2sd:fn')
    with pytest.raises(TypeError, match='teacher_forward'):
        make([], teacher_forward=3)


# ----------------------------------------------------------- teacher loading
def test_in_memory_teacher_state_dict_is_loaded_and_logged_by_name(monkeypatch) -> None:
    ref = ToyTeacher()
    with torch.no_grad():
        ref.a.weight.fill_(0.25)
    logged: list[str] = []
    monkeypatch.setattr(distill_base, 'print_log', lambda msg, **kw: logged.append(msg))
    model = DistillModel(
        student=ToyStudent(),
        teacher=ToyTeacher(),
        teacher_checkpoint=ref.state_dict(),
        distill=[],
    )
    assert model.teacher_checkpoint == 'in-memory teacher state dict'
    assert torch.all(model.teacher.a.weight == 0.25)
    assert any('in-memory teacher state dict' in m and 'loaded 4 tensors' in m for m in logged)
    assert not any('OrderedDict' in m or 'tensor(' in m for m in logged)


def test_deprecated_argument_names(tmp_path) -> None:
    path = tmp_path / 't.pth'
    ref = ToyTeacher()
    torch.save(ref.state_dict(), path)
    with pytest.warns(DeprecationWarning, match="'teacher_ckpt' is deprecated"):
        model = DistillModel(
            student=ToyStudent(), teacher=ToyTeacher(), teacher_ckpt=str(path), distill=[]
        )
    assert model.teacher_checkpoint == str(path)
    with pytest.raises(ValueError, match='not both'):
        DistillModel(
            student=ToyStudent(),
            teacher=ToyTeacher(),
            teacher_checkpoint=str(path),
            teacher_ckpt=str(path),
        )


# -------------------------------------------------------------------- scopes
FAKE_MODELS = Registry('model', parent=MMENGINE_MODELS, scope='fakescope_g2sd_test')


@FAKE_MODELS.register_module()
class FakeChild(nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 4)


@FAKE_MODELS.register_module()
class FakeDetector(BaseModel):
    """Builds an unprefixed child from the *current* scope, like mmdet's detectors."""

    def __init__(self, child: dict) -> None:
        super().__init__()
        self.child = MMENGINE_MODELS.build(child)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.child(inputs)
        return {'loss_fake': out.mean()} if mode == 'loss' else out


def test_host_library_models_build_in_their_own_scope() -> None:
    cfg = dict(type='fakescope_g2sd_test.FakeDetector', child=dict(type='FakeChild'))
    with pytest.raises(KeyError, match='FakeChild'):
        MODELS.build(dict(cfg, _scope_='g2sd'))  # what forcing the g2sd scope did
    model = DistillModel(
        student=cfg,
        teacher=dict(cfg),
        allow_random_teacher=True,
        distill=[dict(student='child', teacher='child', loss=dict(type='g2sd.FeatureLoss'))],
    )
    assert isinstance(model.student.child, FakeChild) and isinstance(model.teacher, FakeDetector)
    losses = model(X, None, mode='loss')
    assert set(losses) == {'loss_fake', 'distill.loss_feature'}


@pytest.mark.slow
def test_mmdet_config_reference_and_detector_teacher_forward() -> None:
    pytest.importorskip('mmdet')
    from mmengine.hub import get_config

    ref = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
    teacher_cfg = get_config(ref).model.to_dict()
    teacher_cfg['type'] = 'mmdet.RetinaNet'  # unprefixed children (ResNet, FPN, ...)
    model = DistillModel(
        student=ref,
        teacher=teacher_cfg,
        allow_random_teacher=True,
        teacher_forward=lambda t, x, ds: t.neck(t.backbone(x)),
    )
    assert type(model.student).__name__ == 'RetinaNet'
    assert type(model.teacher.bbox_head).__name__ == 'RetinaHead'
    feats = model.run_teacher(torch.randn(1, 3, 64, 64))
    assert len(feats) == 5 and feats[0].shape == (1, 256, 8, 8)


# ---------------------------------------------------------------- AMP / DDP
def test_bf16_autocast_through_the_cpu_amp_optim_wrapper() -> None:
    from g2sd.engine.optim import CPUAmpOptimWrapper

    loss = RecordingLoss()
    model = make([dict(student='b', teacher='b', loss=loss)])
    ow = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.student.b.weight.detach().clone()
    log = model.train_step(dict(inputs=X, data_samples=None), ow)
    s, t, _ = loss.seen[0]
    assert s.dtype == torch.bfloat16 and t.dtype == torch.bfloat16
    assert not t.requires_grad and s.requires_grad
    assert torch.isfinite(log['loss']) and not torch.equal(before, model.student.b.weight)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import OptimWrapper

    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        model = make([dict(student='b', teacher='b', loss=dict(type='g2sd.FeatureLoss'))])
        ddp = MMDistributedDataParallel(module=model, device_ids=None)
        ow = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.5))
        ddp.train_step(dict(inputs=X[rank : rank + 1], data_samples=None), ow)
        torch.save(model.student.state_dict(), os.path.join(out_dir, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_average_the_wrapper_gradients() -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, 'init'), d), nprocs=2, join=True)
        r0 = torch.load(os.path.join(d, 'rank0.pth'), weights_only=True)
        r1 = torch.load(os.path.join(d, 'rank1.pth'), weights_only=True)
    # Independent: one process, full batch (both per-rank losses are means over 1 sample,
    # so DDP's averaged gradient is the full-batch gradient).
    model = make([dict(student='b', teacher='b', loss=dict(type='g2sd.FeatureLoss'))])
    s, t = model.student, model.teacher
    hs = s.b(s.a(s.a(X)))
    with torch.no_grad():
        ht = t.b(t.a(X))
    per_sample = s.head(hs).pow(2).mean(-1) + (hs - ht).pow(2).mean(-1)  # task + distill
    per_sample.mean().backward()
    with torch.no_grad():
        for p in s.parameters():
            p -= 0.5 * p.grad
    for k, v in s.state_dict().items():
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)
