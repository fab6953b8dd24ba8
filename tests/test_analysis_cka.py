"""Linear CKA (g2sd.analysis.cka) and its CLI tools/analysis/cka.py.

Expected values come from a separate HSIC formula with an explicit centring matrix
H = I - 11^T / n (Kornblith et al., ICML 2019, eq. 3-4), from hand-computed numbers, or from
forward hooks on the ViT blocks, never from the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from g2sd.analysis.cka import block_features, cka_matrix, linear_cka
from g2sd.models import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'analysis' / 'cka.py'
STUDENT = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2)
TEACHER = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=48, depth=3, num_heads=2)


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, HSIC = tr(KHLH)."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.trace(a @ h @ b @ h))

    return hsic(k, l_) / (hsic(k, k) * hsic(l_, l_)) ** 0.5


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)  # float64, so that scaled copies are exact
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 7, generator=g, dtype=torch.float64)
    return x, y + 0.8 * torch.randn(12, 7, generator=g, dtype=torch.float64)


def test_literal_one_dimensional_value():
    # centred x = (-1, 0, 1), y = (0, -1, 1): (y.x)^2 / (|x|^2 |y|^2) = 1 / (2 * 2)
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)


def test_equals_hsic_form(xy):
    x, y = xy
    expected = hsic_cka(x, y)
    assert 0.05 < expected < 0.95  # a non-trivial case
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-10)
    assert linear_cka(y, x) == pytest.approx(expected, abs=1e-10)


def test_self_similarity_is_one(xy):
    x, y = xy
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y.half(), y.half()) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_invariance(xy):
    x, y = xy
    g = torch.Generator().manual_seed(7)
    qx, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    qy, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=torch.float64))
    assert torch.allclose(qx.T @ qx, torch.eye(5, dtype=torch.float64), atol=1e-12)
    ref = hsic_cka(x, y)
    assert linear_cka(x @ qx, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x @ qx, y @ qy) == pytest.approx(ref, abs=1e-10)


def test_isotropic_scaling_and_shift_invariance(xy):
    x, y = xy
    ref = hsic_cka(x, y)
    assert linear_cka(3.7 * x, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, 0.01 * y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(ref, abs=1e-10)  # centring


def test_not_invariant_to_non_isotropic_scaling(xy):
    x, y = xy
    d = torch.tensor([1.0, 10.0, 0.1, 3.0, 0.5], dtype=torch.float64)
    scaled = linear_cka(x * d, y)
    assert scaled == pytest.approx(hsic_cka(x * d, y), abs=1e-10)
    assert abs(scaled - linear_cka(x, y)) > 1e-2


def test_cka_matrix_matches_pairwise_hsic():
    g = torch.Generator().manual_seed(3)
    a = [torch.randn(9, c, generator=g) for c in (4, 6)]
    b = [torch.randn(9, c, generator=g) for c in (3, 5, 8)]
    b[1] = a[0] @ torch.randn(4, 5, generator=g)  # a linear map of a[0]: high similarity
    m = cka_matrix(a, b)
    assert m.shape == (2, 3) and m.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            assert float(m[i, j]) == pytest.approx(hsic_cka(a[i], b[j]), abs=1e-10)
    assert cka_matrix(a, a).diagonal().tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize(
    ('x', 'y', 'match'),
    [
        (torch.ones(1, 3), torch.ones(1, 3), 'n >= 2'),
        (torch.randn(4), torch.randn(4, 2), '2-D'),
        (torch.randn(4, 2), torch.randn(5, 2), 'same number of rows'),
        (torch.ones(4, 2), torch.randn(4, 2), 'constant'),
        (torch.tensor([[0.0], [float('nan')]]), torch.randn(2, 1), 'non-finite'),
    ],
)
def test_linear_cka_value_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        linear_cka(x, y)


def test_type_and_list_errors():
    with pytest.raises(TypeError, match='torch.Tensor'):
        linear_cka([[1.0], [2.0]], torch.randn(2, 1))
    with pytest.raises(ValueError, match='feats_b is empty'):
        cka_matrix([torch.randn(3, 2)], [])
    with pytest.raises(ValueError, match=r'feats_b\[0\] has 4 rows'):
        cka_matrix([torch.randn(3, 2)], [torch.randn(4, 2)])
    with pytest.raises(TypeError, match='list'):
        cka_matrix(torch.randn(3, 2), [torch.randn(3, 2)])


def test_block_features_match_block_hooks():
    model = VisionTransformer(num_classes=0, global_pool='avg', **STUDENT).train()
    images = torch.randn(5, 1, 28, 28)
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
    with torch.no_grad():
        model.eval()(images)
    for h in hooks:
        h.remove()
    model.train()
    prefix = model.num_prefix_tokens
    patches = [o[:, prefix:] for o in outs]  # (B, N, C) per block, N = 16
    assert patches[0].shape == (5, 16, 32)

    mean = block_features(model, images, batch=2)
    assert model.training  # mode restored
    assert [tuple(f.shape) for f in mean] == [(5, 32), (5, 32)]
    for f, p in zip(mean, patches):
        torch.testing.assert_close(f, p.mean(dim=1), rtol=1e-5, atol=1e-5)
    every = block_features(model, images, batch=100, tokens='all')
    assert [tuple(f.shape) for f in every] == [(80, 32), (80, 32)]
    torch.testing.assert_close(every[1][16:32], patches[1][1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='tokens must be one of'):
        block_features(model, images, tokens='cls')
    with pytest.raises(ValueError, match='at least 2 images'):
        block_features(model, images[:1])


def _tool():
    spec = importlib.util.spec_from_file_location('cka_tool', TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_writes_png_and_json(tmp_path, fmnist_root, capsys):
    student, teacher = tmp_path / 'student.pth', tmp_path / 'teacher.pth'
    torch.save(VisionTransformer(**STUDENT).state_dict(), student)
    torch.save(VisionTransformer(**TEACHER).state_dict(), teacher)
    tool = _tool()
    common = ['--data-root', str(fmnist_root), '--num-images', '20', '--device', 'cpu']
    out = tmp_path / 'out'
    argv = ['--student-ckpt', str(student), '--student-arch', json.dumps(STUDENT),
            '--teacher-ckpt', str(teacher), '--teacher-arch', json.dumps(TEACHER),
            '--out-dir', str(out), *common]  # fmt: skip
    assert tool.main(argv) == 0
    assert (out / 'cka.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rec = json.loads((out / 'cka.json').read_text())
    m = torch.tensor(rec['matrix'])
    assert m.shape == (2, 3)
    assert ((m >= 0) & (m <= 1 + 1e-9)).all()
    assert rec['num_images'] == 20 and rec['rows_per_block'] == 20
    assert rec['teacher']['arch'] == TEACHER and rec['student']['checkpoint'] == str(student)
    assert rec['best_teacher_block'] == [int(j) + 1 for j in m.argmax(dim=1)]
    assert 'S2' in capsys.readouterr().out

    # the same encoder on both sides, every patch token a row: the diagonal is exactly 1
    argv = ['--student-ckpt', str(student), '--student-arch', json.dumps(STUDENT),
            '--teacher-ckpt', str(student), '--teacher-arch', json.dumps(STUDENT),
            '--tokens', 'all', '--out-dir', str(out), '--name', 'self', *common]  # fmt: skip
    assert tool.main(argv) == 0
    rec = json.loads((out / 'self.json').read_text())
    assert rec['rows_per_block'] == 20 * 16
    assert torch.tensor(rec['matrix']).diagonal().tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    assert (out / 'self.png').is_file()

    with pytest.raises(SystemExit) as e:
        tool.main([*argv[:2], '--student-arch', 'fmnist-big'])
    assert e.value.code == 2
    assert 'fmnist-big' in capsys.readouterr().err


def test_cli_help():
    out = subprocess.run(
        [sys.executable, str(TOOL), '--help'], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    assert '--student-ckpt' in out.stdout and '--tokens' in out.stdout
