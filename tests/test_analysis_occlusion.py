"""Occlusion analysis (G2SD's robustness figure; Naseer et al., NeurIPS 2021 patch drop)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import g2sd.cls  # noqa: F401  (registers the cls types)
from g2sd.analysis.occlusion import (
    ViTOcclusionClassifier,
    occlude_zero,
    occlusion_curve,
    occlusion_logits,
    occlusion_noise,
)
from g2sd.checkpoint import load_pretrained
from g2sd.engine.datasets import FashionMNIST
from g2sd.models.vit import random_masking
from g2sd.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'analysis' / 'occlusion.py'
# 28 px gray images, 4 px patches -> a 7 x 7 grid of N = 49 patches.
TEACHER_CFG = REPO / 'configs/cls/mae-ft_vit-teacher_fmnist.py'
TEACHER_CKPT = REPO / 'checkpoints/fmnist_vit-teacher_cls.pth'  # shipped, ~79% top-1
TINY = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)


def classifier(distilled: bool) -> torch.nn.Module:
    kind = 'g2sd.DistilledVisionTransformer' if distilled else 'g2sd.VisionTransformer'
    backbone = dict(type=kind, num_classes=10, global_pool='token', **TINY)
    return MODELS.build(dict(type='g2sd.ViTClassifier', backbone=backbone)).eval()


def zero_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, 28, 28) -> (B, 49) bool: the 4 x 4 patch is entirely 0."""
    p = images.reshape(images.shape[0], 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(-1, 49, 16)
    return (p == 0).all(-1)


@pytest.mark.parametrize('distilled', [False, True])
@pytest.mark.parametrize('mode', ['drop', 'zero'])
def test_zero_occlusion_is_the_plain_evaluation(distilled: bool, mode: str) -> None:
    model = classifier(distilled)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        plain = model(x, mode='tensor')
        scores = torch.stack([p['pred_score'] for p in model.predict(x)])
    labels = plain.argmax(-1).clone()
    labels[4:] = (labels[4:] + 1) % 10  # 4 of 6 right by construction
    fn = ViTOcclusionClassifier(model)
    noise = occlusion_noise(6, 49, torch.Generator().manual_seed(3))
    logits = occlusion_logits(fn, x, 0.0, mode, 4, noise)
    assert torch.equal(logits, plain)
    assert torch.equal(logits.argmax(-1), scores.argmax(-1))
    assert occlusion_curve(fn, x, labels, [0.0], mode, batch_size=6) == [4 / 6]


def test_occlude_zero_whole_patches_same_seed_same_patches() -> None:
    ones = torch.ones(3, 1, 28, 28)
    # round(r * 49): 4.9 -> 5, 14.7 -> 15, 24.5 -> 24 (half to even), 44.1 -> 44
    for ratio, k in ((0.0, 0), (0.1, 5), (0.3, 15), (0.5, 24), (0.9, 44)):
        out = occlude_zero(ones, ratio, 4, torch.Generator().manual_seed(0))
        assert zero_patches(out).sum(1).tolist() == [k, k, k]
        assert int((out == 0).sum()) == 3 * k * 16  # nothing zeroed outside those patches
        assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(ones, torch.ones(3, 1, 28, 28))  # input untouched
    a = occlude_zero(ones, 0.5, 4, torch.Generator().manual_seed(7))
    b = occlude_zero(ones, 0.5, (4, 4), torch.Generator().manual_seed(7))
    c = occlude_zero(ones, 0.5, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Larger ratios occlude a superset; the zeroed patches are those MAE masking drops.
    noise = occlusion_noise(3, 49, torch.Generator().manual_seed(1))
    small, big = (zero_patches(occlude_zero(ones, r, 4, noise=noise)) for r in (0.3, 0.6))
    assert bool((big | ~small).all())
    _, mask, _, _ = random_masking(torch.zeros(3, 49, 2), 0.3, noise)  # keeps int(34.3) = 34
    assert torch.equal(small, mask.bool())


@pytest.mark.parametrize('distilled', [False, True])
def test_drop_keeps_the_expected_tokens(distilled: bool) -> None:
    model = classifier(distilled)
    fn = ViTOcclusionClassifier(model)
    seen: list[torch.Tensor] = []
    hook = fn.backbone.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(2, 1, 28, 28)
    noise = occlusion_noise(2, 49, torch.Generator().manual_seed(5))
    extra = 2 if distilled else 1  # class token (+ distillation token at the end)
    try:
        for ratio, kept in ((0.0, 49), (0.3, 34), (0.5, 25), (0.9, 5)):
            seen.clear()
            logits = occlusion_logits(fn, x, ratio, 'drop', 4, noise)
            assert logits.shape == (2, 10)
            assert seen[0].shape == (2, kept + extra, 32)
    finally:
        hook.remove()
    # The kept tokens are the patches of smallest noise, in that order, after the class token.
    with torch.no_grad():
        tokens = fn.backbone.patchify_embed(x)
    ids = torch.argsort(noise, dim=1)[:, :34]
    expected = torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, 32))
    seen.clear()
    hook = fn.backbone.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    occlusion_logits(fn, x, 0.3, 'drop', 4, noise)
    hook.remove()
    torch.testing.assert_close(seen[0][:, 1 : 1 + 34], expected)


def test_curve_is_a_fraction_per_ratio_and_refuses_bad_input() -> None:
    model = classifier(False)
    fn = ViTOcclusionClassifier(model)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    for mode in ('drop', 'zero'):
        curve = occlusion_curve(fn, x, y, mode=mode, seed=1, batch_size=3)
        assert len(curve) == 10
        assert all(0.0 <= v <= 1.0 and (v * 8).is_integer() for v in curve)
    with pytest.raises(ValueError, match='1.0'):
        occlusion_curve(fn, x, y, [0.0, 1.0])
    with pytest.raises(ValueError, match='blur'):
        occlusion_curve(fn, x, y, [0.0], 'blur')
    with pytest.raises(ValueError, match='patch_size'):
        occlusion_curve(lambda t: model(t), x, y, [0.0], 'zero')
    with pytest.raises(TypeError, match='Linear'):
        ViTOcclusionClassifier(torch.nn.Linear(2, 2))


def test_cli_writes_png_and_json(tmp_path: Path, fmnist_root: Path) -> None:
    spec = importlib.util.spec_from_file_location('occlusion_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ft = REPO / 'configs/cls/mae-ft_vit-student_fmnist.py'
    sd = REPO / 'configs/cls/mae-sd_vit-student_fmnist.py'
    cfg = Config.fromfile(str(ft))
    plain = MODELS.build(dict(cfg.model, pretrained=None)).eval()
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'ft.pth')
    student = MODELS.build(dict(Config.fromfile(str(sd)).model.student, pretrained=None))
    wrapper = {f'student.{k}': v for k, v in student.state_dict().items()}
    wrapper['teacher.head.weight'] = torch.zeros(10, 96)  # a DistillModel checkpoint
    torch.save({'state_dict': wrapper}, tmp_path / 'sd.pth')
    out = tmp_path / 'out'
    rc = tool.main([
        '--config', str(TEACHER_CFG), '--checkpoint', str(TEACHER_CKPT),
        '--model', f'MAE={ft}:{tmp_path / "ft.pth"}',
        '--model', f'MAE + SD={sd}:{tmp_path / "sd.pth"}',
        '--num-images', '20', '--data-root', str(fmnist_root), '--ratios', '0', '0.5',
        '--batch-size', '7', '--out-dir', str(out), '--name', 'occ',
    ])  # fmt: skip
    assert rc == 0
    assert (out / 'occ.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    result = json.loads((out / 'occ.json').read_text())
    assert list(result['models']) == [TEACHER_CFG.stem, 'MAE', 'MAE + SD']
    assert result['num_images'] == 20 and result['occluded_patches'] == [0, 24]
    for entry in result['models'].values():
        for mode in ('drop', 'zero'):
            assert len(entry[mode]) == 2
            assert all(0.0 <= v <= 1.0 for v in entry[mode])
    # Ratio 0 is the plain evaluation through the config's own test pipeline.
    ds = FashionMNIST(
        root=str(fmnist_root),
        split='test',
        num_samples=20,
        pipeline=cfg.test_dataloader.dataset.pipeline,
    )
    x = torch.stack([ds[i]['inputs'] for i in range(20)])
    y = torch.tensor([ds[i]['data_samples'] for i in range(20)])
    with torch.no_grad():
        top1 = (plain(x, mode='tensor').argmax(-1) == y).sum().item() / 20
    assert result['models']['MAE']['drop'][0] == top1
    assert result['models']['MAE']['zero'][0] == top1
    # A trained classifier (avg pooling), where the normalisation decides the predictions.
    teacher = MODELS.build(dict(Config.fromfile(str(TEACHER_CFG)).model, pretrained=None))
    load_pretrained(teacher.backbone, str(TEACHER_CKPT), use='whole')
    with torch.no_grad():
        t_top1 = (teacher.eval()(x, mode='tensor').argmax(-1) == y).sum().item() / 20
    assert t_top1 >= 0.5
    assert result['models'][TEACHER_CFG.stem]['drop'][0] == t_top1
    assert result['models'][TEACHER_CFG.stem]['zero'][0] == t_top1
    student.eval()
    with torch.no_grad():
        sd_top1 = (student(x, mode='tensor').argmax(-1) == y).sum().item() / 20
    assert result['models']['MAE + SD']['drop'][0] == sd_top1


def test_help_and_bad_model_argument(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), '--help'], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert 'NAME=CONFIG:CKPT' in proc.stdout and '--num-images' in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(TOOL), '--model', 'no-equals-sign', '--out-dir', str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and 'no-equals-sign' in proc.stderr
