"""Every detection config builds (tiny overrides) and holds the official recipe; the
Fashion-MNIST ones train, evaluate with CocoMetric and resume through tools/train.py."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs' / 'det').glob('*.py'))
FMNIST = [p for p in CONFIGS if p.stem.endswith('_fmnist')]
PAPER = [p for p in CONFIGS if p not in FMNIST]
SHIPPED_TEACHER = REPO / 'checkpoints' / 'fmnist_vitdet-teacher.pth'


def _load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _parts(model_cfg: dict) -> tuple[dict, dict | None]:
    if model_cfg['type'] == 'g2sd.DistillModel':
        return model_cfg['student'], model_cfg['teacher']
    return model_cfg, None


def _tiny(det: dict, paper: bool) -> dict:
    det = copy.deepcopy(det)
    det['backbone']['pretrained'] = None
    if paper:  # ViT-B/S/Ti at 1024 -> 32-d at 64 px (patch 16: a 4x4 grid, window 4)
        det['backbone'].update(img_size=64, embed_dim=32, num_heads=2, pretrain_img_size=32)
        det['neck'].update(backbone_channel=32, out_channels=32)
        det['data_preprocessor']['batch_augments'][0]['size'] = (64, 64)
        det['rpn_head'].update(in_channels=32, feat_channels=32)
        roi = det['roi_head']
        roi['bbox_roi_extractor']['out_channels'] = roi['mask_roi_extractor']['out_channels'] = 32
        roi['bbox_head'].update(in_channels=32, conv_out_channels=32, fc_out_channels=64)
        roi['mask_head'].update(in_channels=32, conv_out_channels=32)
    return det


def _batch(in_chans: int) -> dict:
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 36:60, 30:50] = 1
    sample = DetDataSample(
        metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64))
    )
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10.0, 8.0, 40.0, 30.0], [30.0, 36.0, 50.0, 60.0]]),
        labels=torch.tensor([1, 3]),
        masks=BitmapMasks(masks, 64, 64),
    )
    img = torch.randint(0, 255, (in_chans, 64, 64), dtype=torch.uint8)
    return dict(inputs=[img], data_samples=[sample])


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    for required in (
        'vitdet_g2sd_s.py',
        'vitdet_g2sd_ti.py',
        'vitdet_g2sd_s_nosd.py',
        'vitdet_g2sd_ti_nosd.py',
        'vitdet_mae_s.py',
        'vitdet_mae_ti.py',
        'vitdet_mae_b.py',
        'vitdet_teacher_fmnist.py',
        'vitdet_g2sd_fmnist.py',
        'vitdet_g2sd_nosd_fmnist.py',
        'vitdet_mae_fmnist.py',
    ):
        assert required in names


@pytest.mark.parametrize('path', PAPER, ids=[p.name for p in PAPER])
def test_paper_recipe(path: Path) -> None:
    """The official G2SD_det_dis / ViTDet values (reference/g2sd.md section 4.4)."""
    cfg = Config.fromfile(str(path))
    student, teacher = _parts(cfg.model.to_dict())
    dims = {'b': (768, 12), 's': (384, 6), 'ti': (192, 3)}[path.stem.split('_')[2]]
    bb = student['backbone']
    assert (bb['embed_dim'], bb['num_heads'], bb['depth'], bb['patch_size']) == (*dims, 12, 16)
    assert bb['img_size'] == 1024 and bb['pretrain_img_size'] == 224
    assert bb['window_size'] == 14 and tuple(bb['global_attn_indexes']) == (2, 5, 8, 11)
    assert bb['use_rel_pos'] and bb['drop_path_rate'] == 0.1 and bb['pretrained']
    assert tuple(student['neck']['scale_factors']) == (4.0, 2.0, 1.0, 0.5)
    assert student['neck']['out_channels'] == 256 and student['neck']['num_outs'] == 5
    assert student['rpn_head']['num_convs'] == 2
    bbox_head, mask_head = student['roi_head']['bbox_head'], student['roi_head']['mask_head']
    assert bbox_head['type'] == 'mmdet.Shared4Conv1FCBBoxHead'
    assert (bbox_head['conv_out_channels'], bbox_head['fc_out_channels']) == (256, 1024)
    assert bbox_head['norm_cfg'] == mask_head['norm_cfg'] == dict(type='g2sd.LN2d', eps=1e-6)
    opt = cfg.optim_wrapper
    assert opt.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert opt.constructor == 'g2sd.LayerDecayOptimWrapperConstructor'
    assert opt.paramwise_cfg == dict(layer_decay_rate=0.7, weight_decay_rule='detectron2')
    assert opt.type == 'OptimWrapper'
    assert cfg.train_cfg.max_iters == 184375 and cfg.train_cfg.val_interval == 5000
    warm, steps = cfg.param_scheduler
    assert (warm.type, warm.start_factor, warm.end) == ('LinearLR', 0.001, 250)
    assert (steps.type, list(steps.milestones), steps.gamma) == (
        'MultiStepLR',
        [163889, 177546],
        0.1,
    )
    assert cfg.train_dataloader.batch_size == 8 and cfg.auto_scale_lr.base_batch_size == 64
    assert cfg.default_hooks.checkpoint.interval == 5000
    pipe = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    assert pipe['RandomResize']['ratio_range'] == (0.1, 2.0)
    assert pipe['RandomCrop']['crop_size'] == (1024, 1024)
    assert {t['type']: t for t in cfg.test_pipeline}['Resize']['scale'] == (1024, 1024)
    assert cfg.val_evaluator.type == 'mmdet.CocoMetric'
    assert list(cfg.val_evaluator.metric) == ['bbox', 'segm']
    if teacher is not None:
        assert cfg.model.teacher_checkpoint == 'checkpoints/vitdet/model_final_61ccd1.pkl'
        assert cfg.model.teacher_use == 'detector'
        assert teacher['backbone']['embed_dim'] == 768
        weights = {d['name']: d['loss']['loss_weight'] for d in cfg.model.distill}
        assert weights == {'frs_feat': 0.001, 'frs_cls': 0.1}
        assert cfg.custom_hooks[0].warmup == 500


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_and_steps(path: Path, tmp_path: Path) -> None:
    from mmengine.optim import build_optim_wrapper

    import g2sd.det  # noqa: F401  (registers the det types)
    from g2sd.registry import MODELS

    cfg = Config.fromfile(str(path))
    paper = path in PAPER
    model_cfg = cfg.model.to_dict()
    student, teacher_cfg = _parts(model_cfg)
    if teacher_cfg is None:
        model_cfg = _tiny(model_cfg, paper)
        student = model_cfg
    else:
        model_cfg['student'] = student = _tiny(student, paper)
        model_cfg['teacher'] = _tiny(teacher_cfg, paper)
        if paper:
            for d in model_cfg['distill']:
                if 'adapter' in d:
                    d['adapter'].update(in_channels=32, out_channels=32)
        teacher = MODELS.build(ConfigDict(copy.deepcopy(model_cfg['teacher'])))
        ckpt = tmp_path / 'teacher.pth'
        torch.save({'state_dict': teacher.state_dict(), 'meta': {}}, ckpt)
        model_cfg['teacher_checkpoint'] = str(ckpt)
    model = MODELS.build(ConfigDict(model_cfg))
    if teacher_cfg is not None:
        torch.testing.assert_close(
            model.teacher.rpn_head.rpn_cls.weight, teacher.rpn_head.rpn_cls.weight
        )
    ow = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper.to_dict()))
    n_params = sum(len(g['params']) for g in ow.optimizer.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    model.train()
    log = model.train_step(_batch(student['backbone'].get('in_chans', 3)), ow)
    assert torch.isfinite(log['loss'])
    for key in ('loss_rpn_cls', 'loss_cls', 'loss_mask'):
        assert any(k.endswith(key) for k in log), (key, sorted(log))
    if teacher_cfg is not None:
        assert any('frs' in k for k in log), sorted(log)


# --- Fashion-MNIST: real training through tools/train.py -----------------------------------


@pytest.fixture(scope='module')
def coco_set(tmp_path_factory: pytest.TempPathFactory, fmnist_root: Path) -> Path:
    out = tmp_path_factory.mktemp('det') / 'fmnist_coco'
    tool = _load('tools/dataset/make_fmnist_coco.py', 'make_fmnist_coco')
    argv = ['--out', str(out), '--root', str(fmnist_root), '--num-train', '8', '--num-val', '4']
    assert tool.main(argv) == 0
    return out


def _train_cfg(path: Path, coco: Path, work_dir: Path, iters: int, *extra: str) -> Config:
    train = _load('tools/train.py', 'g2sd_train_tool')
    pre = 'model.student.' if 'g2sd_fmnist' in path.name else 'model.'
    opts = [
        f'train_dataloader.dataset.data_root={coco}/',
        f'val_dataloader.dataset.data_root={coco}/',
        f'test_dataloader.dataset.data_root={coco}/',
        f'val_evaluator.ann_file={coco}/annotations/instances_val.json',
        f'test_evaluator.ann_file={coco}/annotations/instances_val.json',
        'train_dataloader.batch_size=2',
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        'default_hooks.checkpoint.interval=2',
        f'{pre}test_cfg.rcnn.score_thr=0.0',  # an untrained head still detects something
    ]
    if path.name != 'vitdet_teacher_fmnist.py':  # students: no pre-training run here
        opts.append(f'{pre}backbone.pretrained=None')
    args = train.parse_args(
        [str(path), '--work-dir', str(work_dir), *extra, '--cfg-options', *opts]
    )
    return train.build_config(args)


@pytest.mark.parametrize('path', FMNIST, ids=[p.name for p in FMNIST])
def test_fmnist_trains_and_evaluates(path: Path, coco_set: Path, tmp_path: Path) -> None:
    from g2sd.engine.runner import G2SDRunner

    if path.name == 'vitdet_g2sd_fmnist.py':
        assert SHIPPED_TEACHER.is_file(), f'{SHIPPED_TEACHER} (the shipped FRS teacher) is missing'
    cfg = _train_cfg(path, coco_set, tmp_path, 2)
    runner = G2SDRunner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2 and (tmp_path / 'iter_2.pth').is_file()
    metrics = runner.val()
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)


class _Iters(Hook):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.seen.append(runner.iter)


def test_fmnist_resume(coco_set: Path, tmp_path: Path) -> None:
    from g2sd.engine.runner import G2SDRunner

    path = REPO / 'configs' / 'det' / 'vitdet_g2sd_nosd_fmnist.py'
    first = G2SDRunner.from_cfg(_train_cfg(path, coco_set, tmp_path, 2))
    first.train()
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = G2SDRunner.from_cfg(_train_cfg(path, coco_set, tmp_path, 4, '--resume'))
    hook = _Iters()
    second.register_hook(hook)
    second.train()
    assert hook.seen == [2, 3]  # continued after the 2 iterations of iter_2.pth
    assert (tmp_path / 'iter_4.pth').is_file()
    moved = [k for k, v in second.model.state_dict().items() if not torch.equal(v, weights[k])]
    assert moved  # the resumed run trained on from the restored weights
