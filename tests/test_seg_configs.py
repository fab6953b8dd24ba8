"""Every segmentation config builds (tiny overrides) and holds the official G2SD_seg_dis recipe;
the Fashion-MNIST ones train and evaluate with mmseg's IoUMetric through tools/train.py."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from mmengine.config import Config, ConfigDict

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs' / 'seg').glob('*.py'))
FMNIST = [p for p in CONFIGS if p.stem.endswith('_fmnist')]
PAPER = [p for p in CONFIGS if p not in FMNIST]
SHIPPED_TEACHER = REPO / 'checkpoints' / 'fmnist_upernet-teacher.pth'
ZOO_TEACHER = (
    'checkpoints/mmseg/upernet_mae-base_fp16_8x2_512x512_160k_ade20k_20220426_174752-f92a2975.pth'
)
TINY = 64  # paper configs at test size: 64 px, patch 16 -> a 4x4 token grid
TINY_C = 32


def _load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _parts(model_cfg: dict) -> tuple[dict, dict | None]:
    if model_cfg['type'] == 'g2sd.DistillModel':
        return model_cfg['student'], model_cfg['teacher']
    return model_cfg, None


def _tiny(seg: dict, paper: bool) -> dict:
    """No backbone init; paper models shrunk to 32-d at 64 px (12 blocks kept)."""
    seg = copy.deepcopy(seg)
    bb = seg['backbone']
    if bb['type'] == 'MAE':  # mmseg's own backbone (the documented teacher alternative)
        bb.update(img_size=(TINY, TINY), embed_dims=TINY_C, num_heads=2)
    else:
        bb['pretrained'] = None
        if paper:
            bb.update(img_size=TINY, embed_dim=TINY_C, num_heads=2)
    if paper:
        seg['data_preprocessor']['size'] = (TINY, TINY)
        seg['neck']['embed_dim'] = TINY_C
        seg['decode_head'].update(in_channels=[TINY_C] * 4, channels=TINY_C)
        seg['auxiliary_head'].update(in_channels=TINY_C, channels=16)
        seg['test_cfg'].update(crop_size=(TINY, TINY), stride=(48, 48))
    return seg


def _batch(in_chans: int, size: int, num_classes: int) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(2):
        s = SegDataSample(
            metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        )
        label = torch.randint(0, num_classes, (1, size, size))
        label[:, :4] = 255  # ignored pixels
        s.gt_sem_seg = PixelData(data=label)
        samples.append(s)
    imgs = [torch.randint(0, 255, (in_chans, size, size), dtype=torch.uint8) for _ in range(2)]
    return dict(inputs=imgs, data_samples=samples)


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert names == {
        'upernet_g2sd_s.py',
        'upernet_g2sd_ti.py',
        'upernet_g2sd_s_nosd.py',
        'upernet_g2sd_ti_nosd.py',
        'upernet_mae_s.py',
        'upernet_mae_ti.py',
        'upernet_mae_b.py',
        'upernet_teacher_fmnist.py',
        'upernet_g2sd_fmnist.py',
        'upernet_g2sd_nosd_fmnist.py',
        'upernet_mae_fmnist.py',
    }


@pytest.mark.parametrize('path', PAPER, ids=[p.name for p in PAPER])
def test_paper_recipe(path: Path) -> None:
    """The official G2SD_seg_dis values (reference/g2sd.md section 5.4)."""
    cfg = Config.fromfile(str(path))
    student, teacher = _parts(cfg.model.to_dict())
    size = path.stem.split('_')[2]
    dims = {'b': (768, 12), 's': (384, 6), 'ti': (192, 3)}[size]
    bb = student['backbone']
    assert bb['type'] == 'g2sd.SegViTBackbone'
    assert (bb['embed_dim'], bb['num_heads'], bb['depth'], bb['patch_size']) == (*dims, 12, 16)
    assert bb['img_size'] == 512 and tuple(bb['out_indices']) == (3, 5, 7, 11)
    assert bb['drop_path_rate'] == 0.1 and bb['init_values'] == 1.0
    assert bb['use_rel_pos_bias'] is True
    init = {
        ('g2sd', 's'): 'student_vit-s_g2sd-gd.pth',
        ('g2sd', 'ti'): 'student_vit-ti_g2sd-gd.pth',
        ('mae', 's'): 'mae_vit-s.pth',
        ('mae', 'ti'): 'mae_vit-ti.pth',
        ('mae', 'b'): 'mae_pretrain_vit_base.pth',
    }[(path.stem.split('_')[1], size)]
    assert Path(bb['pretrained']).name == init
    c = dims[0]
    assert student['type'] == 'EncoderDecoder' and student['_scope_'] == 'mmseg'
    neck, head, aux = student['neck'], student['decode_head'], student['auxiliary_head']
    assert neck['type'] == 'Feature2Pyramid' and neck['embed_dim'] == c
    assert list(neck['rescales']) == [4, 2, 1, 0.5]
    assert head['type'] == 'UPerHead' and list(head['in_channels']) == [c] * 4
    assert head['channels'] == c and tuple(head['pool_scales']) == (1, 2, 3, 6)
    assert head['dropout_ratio'] == 0.1 and head['num_classes'] == 150
    assert aux['type'] == 'FCNHead' and (aux['in_index'], aux['in_channels']) == (2, c)
    assert (aux['channels'], aux['num_convs'], aux['num_classes']) == (256, 1, 150)
    assert aux['loss_decode']['loss_weight'] == 0.4 and head['loss_decode']['loss_weight'] == 1.0
    for part in (neck, head, aux):
        assert part['norm_cfg'] == dict(type='SyncBN', requires_grad=True)
    pre = student['data_preprocessor']
    assert pre['type'] == 'SegDataPreProcessor' and tuple(pre['size']) == (512, 512)
    assert pre['mean'] == [123.675, 116.28, 103.53] and pre['std'] == [58.395, 57.12, 57.375]
    assert pre['bgr_to_rgb'] is True and pre['seg_pad_val'] == 255
    assert student['test_cfg'] == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    # optimiser and schedule
    opt = cfg.optim_wrapper
    assert opt.type == 'OptimWrapper'  # AMP: tools/train.py --amp
    assert opt.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert opt.constructor == 'g2sd.LayerDecayOptimWrapperConstructor'
    assert opt.paramwise_cfg == dict(layer_decay_rate=0.65)
    # mmengine's LinearLR / PolyLR reach their final value at step end - 1: lengths 1500, 160k
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.start_factor, warm.begin, warm.end) == ('LinearLR', 1e-6, 0, 1501)
    assert (poly.type, poly.power, poly.eta_min) == ('PolyLR', 1.0, 0.0)
    assert (poly.begin, poly.end) == (0, 160001)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000
    ckpt = cfg.default_hooks.checkpoint
    assert (ckpt.type, ckpt.by_epoch, ckpt.interval) == ('CheckpointHook', False, 16000)
    assert cfg.auto_scale_lr.base_batch_size == 16
    # data
    train = cfg.train_dataloader
    assert train.batch_size == 2 and train.dataset.type == 'mmseg.ADE20KDataset'
    assert train.dataset.data_root == 'data/ade/ADEChallengeData2016'
    assert train.dataset.reduce_zero_label is True
    assert [t['type'] for t in train.dataset.pipeline] == [
        'LoadImageFromFile',
        'LoadAnnotations',
        'RandomResize',
        'RandomCrop',
        'RandomFlip',
        'PhotoMetricDistortion',
        'PackSegInputs',
    ]
    pipe = {t['type']: t for t in train.dataset.pipeline}
    assert pipe['LoadAnnotations']['reduce_zero_label'] is True
    assert pipe['RandomResize']['scale'] == (2048, 512)
    assert pipe['RandomResize']['ratio_range'] == (0.5, 2.0)
    assert pipe['RandomResize']['keep_ratio'] is True
    assert pipe['RandomCrop'] == dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75)
    assert pipe['RandomFlip']['prob'] == 0.5
    test_pipe = {t['type']: t for t in cfg.val_dataloader.dataset.pipeline}
    assert test_pipe['Resize']['scale'] == (2048, 512)
    assert cfg.val_evaluator == dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
    if teacher is not None:
        assert cfg.model.teacher_checkpoint == ZOO_TEACHER
        assert cfg.model.teacher_use == 'segmentor'
        assert cfg.model.teacher_forward == 'g2sd.seg.decode_teacher_forward'
        tb = teacher['backbone']
        assert (tb['embed_dim'], tb['num_heads'], tb['drop_path_rate']) == (768, 12, 0.0)
        assert tb['pretrained'] is None and teacher['decode_head']['channels'] == 768
        assert [d.to_dict() for d in cfg.model.distill] == [
            dict(
                name='cwd',
                student='decode_head.conv_seg',
                teacher='decode_head.conv_seg',
                loss=dict(type='g2sd.ChannelWiseDivergence', tau=1.0, loss_weight=3.0),
            )
        ]


def test_paper_lr_curve() -> None:
    """The schedulers compose to the official mmcv 0.x poly + linear warm-up, computed here as
    lr(t) = 1e-4 (1 - t / 160000) (1e-6 + (1 - 1e-6) min(t, 1500) / 1500), t = 0..160000."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.optim.scheduler import LinearLR, PolyLR

    cfg = Config.fromfile(str(REPO / 'configs' / 'seg' / 'upernet_g2sd_s_nosd.py'))
    ow = build_optim_wrapper(
        torch.nn.Linear(1, 1), dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    )
    kinds = dict(LinearLR=LinearLR, PolyLR=PolyLR)
    scheds = []
    for s in copy.deepcopy(cfg.param_scheduler):
        s = s.to_dict()
        scheds.append(kinds[s.pop('type')](ow, **s))
    got = []
    for _ in range(160001):
        got.append(ow.optimizer.param_groups[0]['lr'])
        for s in scheds:
            s.step()
    for t in (0, 1, 749, 1499, 1500, 1501, 80000, 159999, 160000):
        want = 1e-4 * (1 - t / 160000) * (1e-6 + (1 - 1e-6) * min(t, 1500) / 1500)
        assert got[t] == pytest.approx(want, rel=1e-9, abs=1e-15), t


def _build_teacher_file(model_cfg: dict, tmp_path: Path) -> tuple[dict, torch.nn.Module]:
    """A random teacher of the config, saved as an mmengine checkpoint for the loader."""
    from g2sd.registry import MODELS

    teacher = MODELS.build(ConfigDict(copy.deepcopy(model_cfg['teacher'])))
    for t in (*teacher.parameters(), *teacher.buffers()):  # off their init: a real load check
        if t.is_floating_point():  # (BN running stats too; positive shifts keep var > 0)
            t.data.add_(0.01 * torch.rand_like(t))
    ckpt = tmp_path / 'teacher.pth'
    torch.save({'state_dict': teacher.state_dict(), 'meta': {}}, ckpt)
    model_cfg['teacher_checkpoint'] = str(ckpt)
    return model_cfg, teacher


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_and_steps(path: Path, tmp_path: Path) -> None:
    from mmengine.optim import build_optim_wrapper

    import g2sd.seg  # noqa: F401  (registers the seg types)
    from g2sd.registry import MODELS

    cfg = Config.fromfile(str(path))
    paper = path in PAPER
    model_cfg = cfg.model.to_dict()
    student, teacher_cfg = _parts(model_cfg)
    if teacher_cfg is None:
        model_cfg = student = _tiny(model_cfg, paper)
    else:
        model_cfg['student'] = student = _tiny(student, paper)
        model_cfg['teacher'] = _tiny(teacher_cfg, paper)
        model_cfg, teacher = _build_teacher_file(model_cfg, tmp_path)
    model = MODELS.build(ConfigDict(model_cfg))
    model.init_weights()
    if teacher_cfg is not None:
        for name in ('decode_head.conv_seg.weight', 'neck.upsample_4x.1.running_mean'):
            got = model.teacher.state_dict()[name]
            torch.testing.assert_close(got, teacher.state_dict()[name])
    ow = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper.to_dict()))
    n_params = sum(len(g['params']) for g in ow.optimizer.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    model.train()
    size = TINY if paper else 48
    batch = _batch(student['backbone']['in_chans'], size, student['decode_head']['num_classes'])
    log = model.train_step(batch, ow)
    assert torch.isfinite(log['loss'])
    assert 'decode.loss_ce' in log and 'aux.loss_ce' in log, sorted(log)
    if teacher_cfg is not None:
        assert torch.isfinite(log['distill.loss_cwd']) and log['distill.loss_cwd'] > 0


def test_mmseg_mae_teacher_alternative(tmp_path: Path) -> None:
    """The documented alternative (upernet_g2sd_s.py): mmseg's own MAE backbone as the teacher
    reads a teacher file of our layout (converted by the 'segmentor' loader) and gives the same
    decode-head logits as our backbone with that file."""
    import g2sd.seg  # noqa: F401
    from g2sd.registry import MODELS

    cfg = Config.fromfile(str(REPO / 'configs' / 'seg' / 'upernet_g2sd_s.py'))
    base = Config.fromfile(str(REPO / 'configs' / '_base_' / 'models' / 'upernet_vit.py'))
    model_cfg = cfg.model.to_dict()
    model_cfg['student'] = _tiny(model_cfg['student'], True)
    model_cfg['teacher'] = _tiny(model_cfg['teacher'], True)
    model_cfg, ours = _build_teacher_file(model_cfg, tmp_path)
    model_cfg['teacher'] = _tiny(base.upernet_b_teacher_mmseg.to_dict(), True)
    model = MODELS.build(ConfigDict(model_cfg))
    assert type(model.teacher.backbone).__name__ == 'MAE'
    x = torch.randn(1, 3, TINY, TINY)
    ours.eval()
    with torch.no_grad():
        want = ours.decode_head(ours.extract_feat(x))
        got = model.teacher.decode_head(model.teacher.extract_feat(x))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --- Fashion-MNIST: real training through tools/train.py -----------------------------------


@pytest.fixture(scope='module')
def ade_set(tmp_path_factory: pytest.TempPathFactory, fmnist_root: Path) -> Path:
    out = tmp_path_factory.mktemp('seg') / 'fmnist_ade'
    tool = _load('tools/dataset/make_fmnist_ade.py', 'make_fmnist_ade')
    argv = ['--out', str(out), '--root', str(fmnist_root), '--num-train', '8', '--num-val', '2']
    assert tool.main(argv) == 0
    return out


def _teacher_checkpoint(tmp_path: Path) -> Path:
    """The shipped toy teacher; a random one of its config until it is shipped."""
    if SHIPPED_TEACHER.is_file():
        return SHIPPED_TEACHER
    from g2sd.registry import MODELS

    base = Config.fromfile(str(REPO / 'configs' / '_base_' / 'models' / 'upernet_fmnist.py'))
    teacher = MODELS.build(ConfigDict(base.fmnist_seg_teacher_frozen.to_dict()))
    path = tmp_path / 'random_teacher.pth'
    torch.save(teacher.state_dict(), path)
    return path


def _train_cfg(path: Path, ade: Path, work_dir: Path, iters: int) -> Config:
    train = _load('tools/train.py', 'g2sd_train_tool')
    distill = path.name == 'upernet_g2sd_fmnist.py'
    pre = 'model.student.' if distill else 'model.'
    opts = [
        f'train_dataloader.dataset.data_root={ade}/',
        f'val_dataloader.dataset.data_root={ade}/',
        f'test_dataloader.dataset.data_root={ade}/',
        'train_dataloader.batch_size=2',
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
    ]
    if path.name != 'upernet_teacher_fmnist.py':  # students: no pre-training run here
        opts.append(f'{pre}backbone.pretrained=None')
    if distill:
        opts.append(f'model.teacher_checkpoint={_teacher_checkpoint(work_dir)}')
    args = train.parse_args([str(path), '--work-dir', str(work_dir), '--cfg-options', *opts])
    return train.build_config(args)


@pytest.mark.parametrize('path', FMNIST, ids=[p.name for p in FMNIST])
def test_fmnist_trains_and_evaluates(path: Path, ade_set: Path, tmp_path: Path) -> None:
    """2 iterations, then mIoU on 2 val canvases by slide inference (64 px, crop 48, stride
    32: the last window is shifted back, 64 not being 48 + k 32)."""
    from g2sd.engine.runner import G2SDRunner

    cfg = _train_cfg(path, ade_set, tmp_path, 2)
    assert cfg.model.get('student', cfg.model)['test_cfg']['mode'] == 'slide'
    runner = G2SDRunner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2 and (tmp_path / 'iter_2.pth').is_file()
    metrics = runner.val()
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics)


def test_fmnist_recipe() -> None:
    """Toy scale of preamble item 6 and the paper's schedule shape at batch 8."""
    student_cfgs = [p for p in FMNIST if p.name != 'upernet_teacher_fmnist.py']
    teacher = Config.fromfile(str(REPO / 'configs' / 'seg' / 'upernet_teacher_fmnist.py'))
    tb = teacher.model.backbone
    assert (tb.embed_dim, tb.depth, tuple(tb.out_indices)) == (96, 6, (1, 2, 3, 5))
    assert (tb.img_size, tb.patch_size, tb.in_chans) == (48, 4, 1)
    assert tb.pretrained == 'checkpoints/fmnist_mae_vit-teacher.pth'
    iters = []
    for p in student_cfgs:
        cfg = Config.fromfile(str(p))
        s, t = _parts(cfg.model.to_dict())
        bb = s['backbone']
        assert (bb['embed_dim'], bb['depth'], tuple(bb['out_indices'])) == (48, 4, (0, 1, 2, 3))
        assert bb['use_rel_pos_bias'] and bb['init_values'] == 1.0
        assert s['decode_head']['channels'] == 48 and s['decode_head']['num_classes'] == 11
        assert s['neck']['norm_cfg'] == dict(type='BN', requires_grad=True)
        assert s['test_cfg'] == dict(mode='slide', crop_size=(48, 48), stride=(32, 32))
        want = {
            'upernet_mae_fmnist.py': 'work_dirs/mae_vit-student_fmnist/student.pth',
            'upernet_g2sd_nosd_fmnist.py': 'work_dirs/g2sd-gd_vit-student_fmnist/student.pth',
            'upernet_g2sd_fmnist.py': 'work_dirs/g2sd-gd_vit-student_fmnist/student.pth',
        }[p.name]
        assert bb['pretrained'] == want
        if t is not None:
            assert cfg.model.teacher_checkpoint == 'checkpoints/fmnist_upernet-teacher.pth'
            assert cfg.model.teacher_use == 'segmentor'
            assert t['backbone']['drop_path_rate'] == 0.0
            assert cfg.model.distill[0].loss.loss_weight == 3.0
        opt = cfg.optim_wrapper
        assert opt.optimizer == dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)
        assert opt.paramwise_cfg == dict(layer_decay_rate=0.65)
        assert cfg.train_dataloader.batch_size == 8
        assert 'PhotoMetricDistortion' not in [
            t['type'] for t in cfg.train_dataloader.dataset.pipeline
        ]
        assert cfg.param_scheduler[1].end - 1 == cfg.train_cfg.max_iters
        assert cfg.train_cfg.val_interval == cfg.train_cfg.max_iters
        iters.append(cfg.train_cfg.max_iters)
    assert len(set(iters)) == 1
    assert teacher.train_cfg.max_iters == 2 * iters[0] == teacher.param_scheduler[1].end - 1
    assert teacher.default_hooks.checkpoint.interval == teacher.train_cfg.max_iters


def test_shipped_teacher_loads() -> None:
    """checkpoints/fmnist_upernet-teacher.pth: a few-MB plain state dict that the G2SD toy
    config's teacher loads strictly with the 'segmentor' use."""
    from g2sd.checkpoint import load_pretrained
    from g2sd.registry import MODELS

    assert SHIPPED_TEACHER.is_file(), f'{SHIPPED_TEACHER} (the shipped CWD teacher) is missing'
    assert SHIPPED_TEACHER.stat().st_size < 10 * 2**20
    cfg = Config.fromfile(str(REPO / 'configs' / 'seg' / 'upernet_g2sd_fmnist.py'))
    teacher = MODELS.build(ConfigDict(cfg.model.teacher.to_dict()))
    sd = torch.load(SHIPPED_TEACHER, map_location='cpu', weights_only=True)
    load_pretrained(teacher, str(SHIPPED_TEACHER), use='segmentor')
    for k, v in teacher.state_dict().items():
        if k in sd:
            torch.testing.assert_close(v, sd[k])
    assert {k for k in sd} >= {
        k for k in teacher.state_dict() if 'relative_position_index' not in k
    }
