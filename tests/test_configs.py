"""Every pre-training config loads, matches the paper recipe, and builds its model."""

import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import g2sd.distill  # noqa: F401  (registrations)
import g2sd.engine  # noqa: F401
from g2sd.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = sorted((ROOT / 'configs' / 'pretrain').glob('*.py'))
ARCH_TYPES = ('g2sd.MaskedAutoencoderViT', 'g2sd.VisionTransformer')


def shrink(node):
    """Paper-size ViTs -> tiny ones with the same structure (heads, depths kept; dims / 8)."""
    if isinstance(node, dict):
        node = {k: shrink(v) for k, v in node.items()}
        if node.get('type') in ARCH_TYPES:
            for key in ('embed_dim', 'decoder_embed_dim'):
                if key in node and node[key] >= 128:
                    node[key] //= 8
            if node.get('img_size', 0) >= 224:
                node['img_size'] = 32
        return node
    if isinstance(node, list):
        return [shrink(v) for v in node]
    return node


def build_model(cfg: Config) -> torch.nn.Module:
    model = shrink(copy.deepcopy(cfg.model.to_dict()))
    if 'teacher' in model:
        model['teacher_checkpoint'] = None
        model['allow_random_teacher'] = True
    return MODELS.build(dict(model, _scope_='g2sd'))


@pytest.mark.parametrize('path', PRETRAIN, ids=[p.stem for p in PRETRAIN])
def test_pretrain_config_builds_and_steps(path):
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'g2sd'
    algo = build_model(cfg)
    assert cfg.model.type != 'g2sd.PretrainModel'  # configs name the distiller directly
    assert 'teacher_ckpt' not in cfg.model and 'algorithm' not in cfg.model
    img = algo.student.patch_embed.img_size
    chans = algo.student.patch_embed.proj.in_channels
    x = torch.randn(2, chans, *img)
    if type(algo).__name__ == 'TinyMIMDistiller':
        x = torch.stack([x, x], dim=1)
    losses = algo(x, mode='loss')
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert cfg.train_dataloader.dataset.pipeline


def _cfg(name):
    return Config.fromfile(str(ROOT / 'configs' / 'pretrain' / name))


def test_g2sd_paper_recipe_values():
    """DESIGN.md: G2SD GD for ViT-S / ViT-Ti from an MAE ViT-B teacher, exact recipe."""
    for name, (dim, heads, ddim, dheads) in {
        'g2sd-gd_vit-s_mae-b_8xb256-accum2-300e_in1k.py': (384, 6, 256, 8),
        'g2sd-gd_vit-ti_mae-b_8xb256-accum2-300e_in1k.py': (192, 3, 128, 4),
    }.items():
        cfg = _cfg(name)
        a = cfg.model
        s, t = a.student, a.teacher
        assert (s.embed_dim, s.depth, s.num_heads) == (dim, 12, heads)
        assert (s.decoder_embed_dim, s.decoder_depth, s.decoder_num_heads) == (ddim, 4, dheads)
        assert s.pixel_head is False
        assert (t.embed_dim, t.depth, t.decoder_embed_dim, t.decoder_depth) == (768, 12, 512, 8)
        assert (a.mask_ratio, a.target_block, a.loss_type, a.beta, a.token_set) == (
            0.75,
            4,
            'smooth_l1',
            2.0,
            'all',
        )
        opt = cfg.optim_wrapper
        assert opt.optimizer.type == 'AdamW' and opt.optimizer.betas == (0.9, 0.95)
        assert opt.optimizer.weight_decay == 0.05 and opt.paramwise_cfg.flat_decay_mult == 0.0
        # batch 4096 = 8 GPUs x 256 x 2 accumulation; lr = 1.5e-4 x 4096 / 256
        assert cfg.train_dataloader.batch_size * 8 * opt.accumulative_counts == 4096
        assert opt.optimizer.lr == pytest.approx(2.4e-3)
        assert cfg.auto_scale_lr.base_batch_size == 4096
        sch = cfg.param_scheduler
        assert (sch.type, sch.warmup, sch.eta_min) == ('g2sd.WarmupCosineLR', 10, 2.5e-6)
        assert cfg.train_cfg.max_epochs == 300
        rrc = cfg.train_dataloader.dataset.pipeline[0]
        assert (rrc.size, tuple(rrc.scale), rrc.interpolation) == (224, (0.2, 1.0), 'bicubic')


def test_peer_recipes():
    d = _cfg('dmae_vit-ti_mae-b_8xb512-400e_in1k.py')
    assert d.model.student.num_heads == 12 and d.model.attn_weight == 1.0
    assert d.train_cfg.max_epochs == 400 and d.param_scheduler.warmup == 40
    assert tuple(d.train_dataloader.dataset.pipeline[0].scale) == (0.08, 1.0)
    d2 = _cfg('d2mae_vit-ti_mae-b_8xb512-400e_in1k.py')
    assert d2.model.d2 is True and d2.model.d2_latent_block == 8
    t = _cfg('tinymim_vit-s_mae-b_32xb128-300e_in1k.py')
    s = t.model.student
    assert (s.num_heads, s.last_block_heads, s.drop_path_rate, s.drop_path_mode) == (
        6,
        12,
        0.1,
        'constant',
    )
    assert t.model.teacher_block == 12 and t.param_scheduler.warmup == 15
    assert t.train_dataloader.batch_size * 32 == 4096


def test_auto_scale_lr_counts_gradient_accumulation(tmp_path):
    """--auto-scale-lr uses world x batch x accumulative_counts (mmengine ignores the last)."""
    from g2sd.engine.runner import G2SDRunner

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    runner = G2SDRunner.__new__(G2SDRunner)
    runner._train_dataloader = dict(batch_size=256)
    runner._world_size = 1
    import logging

    runner.logger = logging.getLogger('test')
    from mmengine.optim import OptimWrapper

    net = Net()
    ow = OptimWrapper(torch.optim.AdamW(net.parameters(), lr=2.4e-3), accumulative_counts=2)
    G2SDRunner.scale_lr(runner, ow, dict(base_batch_size=4096, enable=True))
    assert ow.optimizer.param_groups[0]['lr'] == pytest.approx(2.4e-3 * 512 / 4096)
