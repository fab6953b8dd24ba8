"""tools/analysis/throughput_accuracy.py: students vs teacher, images/s vs top-1 (PNG + JSON)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import g2sd.cls  # noqa: F401  (registers the cls types)
from g2sd.engine.datasets import FashionMNIST
from g2sd.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'analysis' / 'throughput_accuracy.py'
FT_CFG = REPO / 'configs/cls/mae-ft_vit-student_fmnist.py'
# 28 px gray images, 7 px patches -> 16 tokens; one block.
TINY = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=16, depth=1, num_heads=2)
SHIPPED = REPO / 'checkpoints/fmnist_vit-teacher_cls.pth'  # trained teacher, ~79% top-1
NORM = dict(mean=0.2860, std=0.3530)  # tools/demo.py's constants (the ARCH models' input)


def load_tool():
    spec = importlib.util.spec_from_file_location('throughput_accuracy_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def tiny_classifier(distilled: bool) -> torch.nn.Module:
    kind = 'g2sd.DistilledVisionTransformer' if distilled else 'g2sd.VisionTransformer'
    pool = 'token' if distilled else 'avg'
    backbone = dict(type=kind, num_classes=10, global_pool=pool, **TINY)
    return MODELS.build(dict(type='g2sd.ViTClassifier', backbone=backbone)).eval()


def expected_top1(model: torch.nn.Module, root: Path, n: int, pipeline: list) -> float:
    ds = FashionMNIST(root=str(root), split='test', num_samples=n, pipeline=pipeline)
    x = torch.stack([ds[i]['inputs'] for i in range(n)])
    y = torch.tensor([int(ds[i]['data_samples']) for i in range(n)])
    with torch.no_grad():
        return (model(x, mode='tensor').argmax(-1) == y).sum().item() / n


def test_parse_model_and_arch_config() -> None:
    tool = load_tool()
    assert tool.parse_model('S=fmnist-student:a/b.pth') == ('S', 'fmnist-student', 'a/b.pth')
    spec = '{"embed_dim": 16, "depth": 1}'
    assert tool.parse_model(f'x y={spec}:c.pth') == ('x y', spec, 'c.pth')
    for bad in ('no-equals', '=fmnist-student:a.pth', 'S=fmnist-student', 'S=:a.pth'):
        with pytest.raises(ValueError, match='NAME=SPEC:CHECKPOINT'):
            tool.parse_model(bad)
    sd = tiny_classifier(True).state_dict()  # backbone.-prefixed, distillation token
    cfg = tool.arch_classifier_config(dict(TINY), sd)
    assert cfg['backbone']['type'] == 'g2sd.DistilledVisionTransformer'
    assert cfg['backbone']['global_pool'] == 'token' and cfg['backbone']['num_classes'] == 10
    plain = tiny_classifier(False).backbone.state_dict()  # plain keys, fc_norm (avg pooling)
    cfg = tool.arch_classifier_config(dict(TINY, num_classes=10), plain)
    assert cfg['backbone']['type'] == 'g2sd.VisionTransformer'
    assert cfg['backbone']['global_pool'] == 'avg'
    assert (
        tool.arch_classifier_config(dict(TINY, global_pool='token'), plain)['backbone'][
            'global_pool'
        ]
        == 'token'
    )  # the ARCH's keys win
    encoder = {k: v for k, v in plain.items() if not k.startswith('head.')}
    with pytest.raises(ValueError, match='head.weight'):
        tool.arch_classifier_config(dict(TINY), encoder)


def test_cli_writes_png_and_json(tmp_path: Path, fmnist_root: Path) -> None:
    tool = load_tool()
    teacher = tiny_classifier(False)
    torch.save(teacher.backbone.state_dict(), tmp_path / 'teacher.pth')  # plain ViT state dict
    student = tiny_classifier(True)
    torch.save({'state_dict': student.state_dict()}, tmp_path / 'student.pth')  # mmengine
    cfg = Config.fromfile(str(FT_CFG))
    ft = MODELS.build(dict(cfg.model, pretrained=None)).eval()
    torch.save({'state_dict': ft.state_dict()}, tmp_path / 'ft.pth')
    arch = json.dumps(TINY)
    out = tmp_path / 'out'
    rc = tool.main([
        '--model', f'teacher={arch}:{tmp_path / "teacher.pth"}',
        '--model', f'student={arch}:{tmp_path / "student.pth"}',
        '--model', f'MAE ft={FT_CFG}:{tmp_path / "ft.pth"}',
        '--model', f'shipped=fmnist-teacher:{SHIPPED}',
        '--num-images', '20', '--data-root', str(fmnist_root), '--batch-size', '8',
        '--iters', '1', '--warmup', '0', '--repeats', '1', '--out-dir', str(out), '--name', 'ta',
    ])  # fmt: skip
    assert rc == 0
    assert (out / 'ta.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    result = json.loads((out / 'ta.json').read_text())
    assert list(result['models']) == ['teacher', 'student', 'MAE ft', 'shipped']
    assert result['num_images'] == 20 and result['setting']['batch_size'] == 8
    for entry in result['models'].values():
        assert math.isfinite(entry['throughput']) and entry['throughput'] > 0
        assert (entry['accuracy'] * 20).is_integer()
    norm = [dict(type='ToTensor'), dict(type='Normalize', mean=[NORM['mean']], std=[NORM['std']])]
    assert result['models']['teacher']['accuracy'] == expected_top1(teacher, fmnist_root, 20, norm)
    assert result['models']['student']['accuracy'] == expected_top1(student, fmnist_root, 20, norm)
    ft_pipe = cfg.test_dataloader.dataset.pipeline  # the config's own normalisation
    assert result['models']['MAE ft']['accuracy'] == expected_top1(ft, fmnist_root, 20, ft_pipe)
    # A trained classifier, whose predictions depend on the weights and the normalisation.
    shipped = MODELS.build(
        dict(
            Config.fromfile(str(REPO / 'configs/cls/mae-ft_vit-teacher_fmnist.py')).model,
            pretrained=None,
        )
    )
    shipped.backbone.load_state_dict(torch.load(SHIPPED, weights_only=True))
    t_top1 = expected_top1(shipped.eval(), fmnist_root, 20, norm)
    assert t_top1 >= 0.5
    assert result['models']['shipped']['accuracy'] == t_top1
    params = sum(p.numel() for p in teacher.parameters()) / 1e6
    assert result['models']['teacher']['params_m'] == pytest.approx(params)


def test_help_and_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), '--help'], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert 'NAME=SPEC:CKPT' in proc.stdout and '--batch-size' in proc.stdout
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    for argv, needle in (
        (['--model', 'no-equals-sign'], 'no-equals-sign'),
        (['--model', f'a=fmnist-studnet:{ckpt}'], 'fmnist-studnet'),
        (['--model', 'a=fmnist-student:missing.pth'], 'missing.pth'),
        (['--model', f'a=fmnist-student:{ckpt}', '--iters', '0'], '--iters'),
    ):
        proc = subprocess.run(
            [sys.executable, str(TOOL), *argv, '--out-dir', str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert proc.returncode == 2 and needle in proc.stderr, (argv, proc.stderr)
