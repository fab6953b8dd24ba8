"""tools/benchmark/gd_step.py --compare-official (against a fake official tree written here)
and tools/benchmark/cuda_check.sh (syntax, and every command line's arguments parse)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GD_STEP = ROOT / 'tools' / 'benchmark' / 'gd_step.py'
CUDA_CHECK = ROOT / 'tools' / 'benchmark' / 'cuda_check.sh'

# A stand-in for G2SD/models_mae.py with the official entry points and return tuples; its
# util/misc.py imports torch._six and the model uses np.float, as the official code does, so
# the benchmark's import shims are exercised.
FAKE_MODELS_MAE = """
import numpy as np
import torch
import torch.nn as nn

CALLS = {'teacher': 0, 'student': 0}


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24,
                 num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=nn.LayerNorm, norm_pix_loss=False, teacher=False,
                 suplayer=4, encoder_pred_channel=768, decoder_pred_channel=512,
                 supervise_all=False):
        super().__init__()
        assert np.float(mlp_ratio) == 4.0
        self.teacher, self.p = teacher, patch_size
        self.embed = nn.Linear(in_chans * patch_size ** 2, embed_dim)
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        if not teacher:
            self.encoderfeature_pred = nn.Linear(embed_dim, encoder_pred_channel)
            self.decoderfeature_pred = nn.Linear(decoder_embed_dim, decoder_pred_channel)

    def forward(self, imgs, noise, mask_ratio=0.75):
        b, c, h, w = imgs.shape
        p = self.p
        x = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.embed(x.reshape(b, (h // p) * (w // p), c * p * p))
        assert noise.shape == x.shape[:2], (noise.shape, x.shape)
        keep = int(x.shape[1] * (1 - mask_ratio))
        ids = torch.argsort(noise, dim=1)[:, :keep]
        vis = torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        pre = torch.cat([vis.mean(1, keepdim=True), vis], 1)
        latent = self.norm(pre)
        dec = self.decoder_embed(torch.cat([latent[:, :1], x], 1))
        mask = torch.ones(b, x.shape[1], device=imgs.device)
        if self.teacher:
            CALLS['teacher'] += 1
            return None, dec, mask, pre, [], None
        CALLS['student'] += 1
        return (self.decoderfeature_pred(dec), None, mask, pre,
                self.encoderfeature_pred(latent), [], None)
"""
FAKE_MISC = """
import torch
from torch._six import inf


class NativeScalerWithGradNormCount:
    def __init__(self):
        self._scaler = torch.amp.GradScaler('cuda', enabled=torch.cuda.is_available())

    def __call__(self, loss, optimizer, clip_grad=None, parameters=None, create_graph=False,
                 update_grad=True):
        self._scaler.scale(loss).backward(create_graph=create_graph)
        self._scaler.step(optimizer)
        self._scaler.update()
        return inf
"""


def run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def fake_official(tmp_path: Path) -> Path:
    code = tmp_path / 'G2SD_export' / 'G2SD'
    (code / 'util').mkdir(parents=True)
    (code / 'models_mae.py').write_text(textwrap.dedent(FAKE_MODELS_MAE))
    (code / 'util' / '__init__.py').write_text('')
    (code / 'util' / 'misc.py').write_text(textwrap.dedent(FAKE_MISC))
    return code.parent


def test_gd_step_help():
    out = run(GD_STEP, '--help')
    assert out.returncode == 0, out.stderr
    assert '--compare-official' in out.stdout and '--preset' in out.stdout


def test_compare_official_against_a_fake_tree(tmp_path, fake_official):
    out = run(
        GD_STEP, '--preset', 'tiny', '--batch-size', '2', '--iters', '1', '--warmup', '1',
        '--rounds', '2', '--compare-official', fake_official, '--json', tmp_path / 'cmp.json',
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert '| | official G2SD | ours | ratio |' in out.stdout
    assert re.search(r'\| fp32 \| [\d.]+ img/s, \+-?\d+ MiB \| [\d.]+ img/s', out.stdout)
    assert re.search(r'\| bfloat16 autocast \|.*\| [\d.]+x, memory', out.stdout), out.stdout
    res = json.loads((tmp_path / 'cmp.json').read_text())
    rows = res['rows']
    # 2 rounds x 2 modes x 2 implementations, the order flipping each round
    assert [(r['impl'], r['mode']) for r in rows] == [
        ('official', 'fp32'), ('ours', 'fp32'), ('official', 'amp'), ('ours', 'amp'),
        ('ours', 'fp32'), ('official', 'fp32'), ('ours', 'amp'), ('official', 'amp'),
    ]  # fmt: skip
    assert all(r['img_per_s'] > 0 for r in rows)
    by_mode = {s['mode']: s for s in res['summary']}
    assert set(by_mode) == {'fp32', 'amp'}
    for mode, s in by_mode.items():
        ours = sorted(r['img_per_s'] for r in rows if r['impl'] == 'ours' and r['mode'] == mode)
        official = sorted(
            r['img_per_s'] for r in rows if r['impl'] == 'official' and r['mode'] == mode
        )
        assert s['rounds'] == 2
        assert s['speed_ratio'] == pytest.approx((sum(ours) / 2) / (sum(official) / 2))


def test_compare_official_refuses_a_wrong_dir(tmp_path):
    out = run(GD_STEP, '--preset', 'tiny', '--compare-official', tmp_path)
    assert out.returncode == 2
    assert 'models_mae.py' in out.stderr and str(tmp_path) in out.stderr


def test_without_official_dir_rows_are_ours_only(tmp_path):
    out = run(
        GD_STEP, '--preset', 'tiny', '--batch-size', '2', '--iters', '1', '--warmup', '0',
        '--modes', 'fp32', '--profile', '5', '--json', tmp_path / 'rows.json',
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'official' not in out.stdout
    assert 'profile of one step: ours fp32, top 5 by self_cpu_time_total' in out.stdout
    assert 'Self CPU time total' in out.stdout
    (row,) = json.loads((tmp_path / 'rows.json').read_text())
    assert row['impl'] == 'ours' and row['mode'] == 'fp32'


# ------------------------------------------------------------------ cuda_check.sh
def test_cuda_check_syntax():
    out = subprocess.run(['bash', '-n', str(CUDA_CHECK)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def cuda_check_commands(official: Path, out_dir: Path) -> list[list[str]]:
    """The command lines of the script's ``check NAME TIMEOUT CMD...`` calls, expanded."""
    text = CUDA_CHECK.read_text()
    (gd,) = re.findall(r'^GD="([^"]+)"$', text, flags=re.M)
    subs = {'"$PY"': 'PY', '$GD': gd, '"$OUT_DIR': f'"{out_dir}', '"$G2SD_OFFICIAL"': str(official)}
    cmds = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith('check ') or '()' in line:
            continue
        for old, new in subs.items():
            line = line.replace(old, new)
        words = shlex.split(line)
        assert words[3] == 'PY', line
        cmds.append(words[4:])
    return cmds


def test_cuda_check_command_lines_parse(tmp_path, fake_official, monkeypatch):
    cmds = cuda_check_commands(fake_official, tmp_path)
    tools = {c[0] for c in cmds if c[0].startswith('tools/')}
    names = ('gd_step', 'sd_step', 'det_step', 'seg_step', 'throughput')
    assert tools == {f'tools/benchmark/{n}.py' for n in names}
    pytest_lines = [c for c in cmds if c[:2] == ['-m', 'pytest']]
    assert len(pytest_lines) == 1 and pytest_lines[0][2:4] == ['-m', 'cuda']
    markers = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['pytest']['ini_options'][
        'markers'
    ]
    assert any(m.split(':')[0] == 'cuda' for m in markers)
    monkeypatch.syspath_prepend(str(ROOT))
    for cmd in cmds:
        if not cmd[0].startswith('tools/'):
            continue
        assert '--device' in cmd and cmd[cmd.index('--device') + 1] == 'cuda', cmd
        spec = importlib.util.spec_from_file_location(Path(cmd[0]).stem, ROOT / cmd[0])
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up
        spec.loader.exec_module(module)
        args = module.parse_args(cmd[1:])  # argparse exits (SystemExit 2) on a bad argument
        assert args.device == 'cuda'
