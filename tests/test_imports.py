"""Import-time contracts of the package layout (README, 'Layout': ``import g2sd``
loads only torch / timm / mmengine; the mmdet / mmseg plugins are imported by configs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_NO_OPENMMLAB_TASK_LIBS = """
import sys
import g2sd, g2sd.models
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mmcv', 'mmdet', 'mmseg'))
assert not bad, f'import g2sd pulled in: {bad[:10]}'
print('ok')
"""


def test_core_import_does_not_load_mmcv_mmdet_mmseg():
    # A fresh interpreter: this test process may already have imported mmdet for other tests.
    proc = subprocess.run(
        [sys.executable, '-c', _NO_OPENMMLAB_TASK_LIBS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith('ok')


@pytest.mark.parametrize('name, folder', [('cls', 'cls'), ('det', 'det'), ('seg', 'seg')])
def test_task_packages_map_to_top_level_folders(name, folder):
    # setup.cfg installs cls/ det/ seg/ as g2sd.cls / g2sd.det / g2sd.seg (package_dir).
    spec = importlib.util.find_spec(f'g2sd.{name}')
    assert spec is not None, f'g2sd.{name} is not importable: is the package installed (pip -e .)?'
    assert Path(spec.origin).resolve() == (REPO / folder / '__init__.py').resolve()
