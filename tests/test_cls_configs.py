"""Every classification config builds (tiny overrides); the paper configs hold the recipe."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from PIL import Image

import g2sd.cls  # noqa: F401  (registers the cls types)
from g2sd.distill import DistillModel
from g2sd.engine.runner import configure_amp
from g2sd.engine.transforms import build_pipeline
from g2sd.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs' / 'cls').glob('*.py'))
TINY = dict(img_size=32, patch_size=8, depth=2, num_heads=2)


def tiny(backbone: dict, embed_dim: int) -> dict:
    return dict(backbone, embed_dim=embed_dim, **TINY)


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    for required in (
        'g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py',
        'g2sd-sd_vit-ti_mae-b_8xb128-200e_in1k.py',
        'g2sd-ft_vit-s_8xb128-200e_in1k.py',
        'g2sd-ft_vit-ti_8xb128-200e_in1k.py',
        'mae-ft_vit-s_8xb128-200e_in1k.py',
        'mae-ft_vit-ti_8xb128-200e_in1k.py',
        'mae-ft_vit-b_8xb128-100e_in1k.py',
        'g2sd-sd_vit-student_fmnist.py',
        'g2sd-ft_vit-student_fmnist.py',
        'mae-sd_vit-student_fmnist.py',
        'mae-ft_vit-student_fmnist.py',
        'mae-ft_vit-teacher_fmnist.py',
    ):
        assert required in names


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds(path: Path, tmp_path: Path) -> None:
    cfg = Config.fromfile(str(path))
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    distill = model_cfg['type'] == 'g2sd.DistillModel'
    student = model_cfg['student'] if distill else model_cfg
    student['backbone'] = tiny(student['backbone'], 32)
    assert student['pretrained']  # every run starts from a pre-trained checkpoint
    student['pretrained'] = None
    if distill:
        model_cfg['teacher'] = tiny(model_cfg['teacher'], 48)
        teacher = MODELS.build(dict(model_cfg['teacher']))
        ckpt = tmp_path / 'teacher.pth'
        torch.save({'model': teacher.state_dict()}, ckpt)
        model_cfg['teacher_checkpoint'] = str(ckpt)
    model = MODELS.build(model_cfg)
    if distill:
        assert isinstance(model, DistillModel)
        torch.testing.assert_close(model.teacher.head.weight, teacher.head.weight)
    # The optimiser wrapper (layer decay) builds on this model, on CPU as well.
    from mmengine.optim import build_optim_wrapper

    configure_amp(cfg)
    ow = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper.to_dict()))
    n_params = sum(len(g['params']) for g in ow.optimizer.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    # One training step on a batch in the config's format.
    c = student['backbone'].get('in_chans', 3)
    k = student['backbone']['num_classes']
    data = dict(inputs=torch.randn(4, c, 32, 32), data_samples=torch.arange(4) % k)
    model.train()
    log = model.train_step(data, ow)
    assert torch.isfinite(log['loss'])
    if distill:
        assert any(key.startswith('distill.loss_') for key in log)
    # Pipelines build and produce tensors.
    img = Image.new('L' if c == 1 else 'RGB', (40, 40), 128)
    for dl in (cfg.train_dataloader, cfg.val_dataloader):
        out = build_pipeline(dl.dataset.pipeline)(img)
        assert out.shape[0] == c


def test_paper_recipe_literals() -> None:
    cfg = Config.fromfile(str(REPO / 'configs/cls/g2sd-sd_vit-s_mae-b_8xb128-200e_in1k.py'))
    m = cfg.model
    assert m.student.backbone.type == 'g2sd.DistilledVisionTransformer'
    assert m.student.backbone.dist_token_position == 'end'
    assert (m.student.backbone.embed_dim, m.student.backbone.depth) == (384, 12)
    assert m.student.backbone.num_heads == 6 and m.student.backbone.drop_path_rate == 0.0
    assert m.teacher.global_pool == 'avg' and m.teacher.embed_dim == 768
    assert m.teacher_use == 'encoder_teacher' and 'teacher_ckpt_use' not in m
    assert m.student_loss_weight == 0.5
    assert m.distill[0].loss.type == 'g2sd.HardKDLoss' and m.distill[0].loss.loss_weight == 0.5
    pre = m.student.data_preprocessor
    assert (pre.mixup_alpha, pre.cutmix_alpha, pre.label_smoothing) == (0.8, 1.0, 0.1)
    assert (pre.prob, pre.switch_prob) == (1.0, 0.5)
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper'
    assert ow.constructor == 'g2sd.LayerDecayOptimWrapperConstructor'
    assert ow.optimizer.lr == pytest.approx(4e-3) and ow.optimizer.weight_decay == 0.05
    assert tuple(ow.optimizer.betas) == (0.9, 0.999)
    assert ow.paramwise_cfg.layer_decay_rate == 0.75
    assert cfg.train_cfg.max_epochs == 200
    sch = cfg.param_scheduler
    assert (sch.type, sch.warmup) == ('g2sd.WarmupCosineLR', 5)
    assert 4e-3 * sch.eta_min_ratio == pytest.approx(1e-6)
    assert cfg.auto_scale_lr.base_batch_size == 1024 and cfg.train_dataloader.batch_size == 128
    (train_t,) = cfg.train_dataloader.dataset.pipeline
    assert train_t.auto_augment == 'rand-m9-mstd0.5-inc1'
    assert (train_t.re_prob, train_t.re_mode, train_t.re_count) == (0.25, 'pixel', 1)
    assert train_t.interpolation == 'bicubic'
    (test_t,) = cfg.val_dataloader.dataset.pipeline
    assert test_t.crop_pct == pytest.approx(224 / 256) and test_t.interpolation == 'bicubic'
    t = build_pipeline(cfg.val_dataloader.dataset.pipeline)
    assert 'Resize(size=256' in repr(t) and 'CenterCrop(size=(224, 224))' in repr(t)

    teacher = Config.fromfile(str(REPO / 'configs/cls/mae-ft_vit-b_8xb128-100e_in1k.py'))
    assert teacher.optim_wrapper.optimizer.lr == pytest.approx(2e-3)
    assert teacher.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
    assert teacher.train_cfg.max_epochs == 100
    assert teacher.model.backbone.global_pool == 'avg'
    assert teacher.model.backbone.drop_path_rate == 0.1
