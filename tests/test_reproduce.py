"""Tests of tools/reproduce.py: run keys, the per-run JSON cache (resumability), the report.

The G2SD reproduction (Huang et al., CVPR 2023, arXiv 2302.14771) is driven on fake runs here
(the run function is replaced), so the caching logic is checked without training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
import reproduce  # noqa: E402


def fake_run(calls: list[str]):
    """A run function that records the key and returns metrics derived from it."""

    def run(spec: reproduce.RunSpec, work_dir: Path, ctx: reproduce.Context) -> dict:
        calls.append(spec.key)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_2.pth'))
        vis = work_dir / '20260101_000000' / 'vis_data'
        vis.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({'loss': 1.0 / step, 'step': step}) for step in (1, 2, 3)]
        (vis / 'scalars.json').write_text('\n'.join(lines) + '\n')
        base = int(spec.key[:4], 16) / 65535 * 0.5 + 0.25 + 0.01 * spec.seed
        if spec.kind == 'pretrain':
            return {'knn': base, 'linear': base - 0.01}
        if spec.kind == 'cls':
            return {'top1': base, 'top5': 0.99}
        if spec.kind == 'det':
            return {'bbox_mAP': base, 'segm_mAP': base / 2}
        return {'mIoU': base}

    return run


@pytest.fixture
def no_analyses(monkeypatch):
    """Skip the sections that need real checkpoints (analyses, throughput, curves)."""
    sections = tuple(s for s in reproduce.SECTIONS if s[0] not in ('analyses', 'throughput'))
    monkeypatch.setattr(reproduce, 'SECTIONS', sections)
    monkeypatch.setattr(reproduce, 'canvases', lambda ctx, task: ctx.work / 'data' / task)


def test_run_key_is_sha1_of_sorted_options_and_stable():
    expected = hashlib.sha1(json.dumps(['c.py', ['a=1', 'b=2'], 3]).encode()).hexdigest()[:16]
    assert reproduce.run_key('c.py', ['b=2', 'a=1'], 3) == expected
    assert reproduce.run_key('c.py', ['a=1', 'b=2'], 3) == expected
    assert reproduce.run_key('c.py', ['a=1', 'b=2'], 4) != expected
    spec = reproduce.RunSpec('c.py', ('b=2', 'a=1'), 3, 'cls')
    assert spec.key == expected


def test_second_invocation_runs_nothing_and_missing_json_reruns_only_it(tmp_path, no_analyses):
    calls: list[str] = []
    argv = ['--quick', '--seeds', '2', '--tasks', 'cls', 'seg', '--work-dir', str(tmp_path)]
    assert reproduce.main(argv, run_fn=fake_run(calls)) == 0
    first = list(calls)
    assert len(first) == len(set(first)) > 0  # every distinct run once (shared runs cached)
    records = sorted((tmp_path / 'runs').glob('*.json'))
    assert len(records) == len(first)
    report = (tmp_path / 'report.md').read_text()
    for title in (
        'Generic distillation methods',
        'Table 2 (cls)',
        'Table 2 (seg)',
        'Single-stage vs two-stage',
        'GD ablation: teacher decoder block k',
        'GD ablation: token set',
        'GD ablation: mask ratio',
        'GD ablation: student decoder depth',
        'Sequential distillation',
        'Training curves',
    ):
        assert title in report, title
    assert '(det)' not in report

    calls.clear()
    assert reproduce.main(argv, run_fn=fake_run(calls)) == 0
    assert calls == []
    assert (tmp_path / 'report.md').read_text().split('_')[0] == report.split('_')[0]

    victim = records[3]
    victim.unlink()
    assert reproduce.main(argv, run_fn=fake_run(calls)) == 0
    assert calls == [victim.stem]


def test_record_format_and_only_report_trains_nothing(tmp_path, no_analyses):
    calls: list[str] = []
    argv = ['--quick', '--tasks', 'cls', '--work-dir', str(tmp_path)]
    reproduce.main(argv, run_fn=fake_run(calls))
    rec = json.loads((tmp_path / 'runs' / f'{calls[0]}.json').read_text())
    assert set(rec) == {'key', 'config', 'options', 'seed', 'metrics', 'wall_s', 'work_dir'}
    assert rec['key'] == reproduce.run_key(rec['config'], rec['options'], rec['seed'])
    assert all(0.0 <= v <= 1.0 for v in rec['metrics'].values())
    assert 'randomness.seed=0' not in rec['options']  # the seed is the record's own field

    (tmp_path / 'runs' / f'{calls[0]}.json').unlink()
    calls2: list[str] = []
    reproduce.main([*argv, '--only-report'], run_fn=fake_run(calls2))
    assert calls2 == []
    assert not (tmp_path / 'runs' / f'{calls[0]}.json').exists()


def test_table2_mean_std_from_per_seed_json(tmp_path, no_analyses):
    """The report's Table 2 row is the mean ± sample std of the per-seed JSON values."""
    calls: list[str] = []
    argv = ['--quick', '--seeds', '2', '--tasks', 'cls', '--work-dir', str(tmp_path)]
    reproduce.main(argv, run_fn=fake_run(calls))
    ctx = reproduce.Context(
        work=tmp_path,
        scale=reproduce.QUICK,
        seeds=(0, 1),
        tasks=('cls',),
        data_root=None,
        cache=reproduce.Cache(tmp_path),
        run_fn=fake_run([]),
        only_report=True,
    )
    specs = reproduce.table2_specs(ctx, 'cls')['G2SD']
    vals = [json.loads(ctx.cache.json_path(s).read_text())['metrics']['top1'] for s in specs]
    mean = 100 * (vals[0] + vals[1]) / 2
    std = 100 * abs(vals[0] - vals[1]) / 2**0.5  # sample std of two values
    line = next(
        x for x in (tmp_path / 'report.md').read_text().splitlines() if x.startswith('| G2SD |')
    )
    assert f'{mean:.2f} ± {std:.2f}' in line


def test_shared_runs_are_one_cached_run(tmp_path):
    ctx = reproduce.Context(
        work=tmp_path,
        scale=reproduce.QUICK,
        seeds=(0,),
        tasks=('cls',),
        data_root=None,
        cache=reproduce.Cache(tmp_path),
        run_fn=fake_run([]),
        only_report=True,
    )
    pre = reproduce.pretrain_spec(ctx, 'G2SD', 0)
    wd = ctx.work_dir(pre)
    # "G2SD w/o SD" of Table 2 is the generic table's G2SD fine-tuning and "GD only"
    table2 = reproduce.table2_specs(ctx, 'cls')['G2SD w/o SD'][0]
    generic = reproduce.cls_spec(ctx, 'G2SD w/o SD', wd / 'student.pth', 0)
    assert table2.key == generic.key
    # the ablation at the config's default value is the plain G2SD run
    assert reproduce.pretrain_spec(ctx, 'G2SD', 0, []).key == pre.key


def test_real_pretrain_run_is_cached(tmp_path):
    """One tiny real run in-process: JSON + student.pth written, a second get() runs nothing."""
    scale = dataclasses.replace(
        reproduce.QUICK, pre_samples=32, batch=16, bank=100, probe_test=50, lp_epochs=3
    )
    ctx = reproduce.Context(
        work=tmp_path,
        scale=scale,
        seeds=(0,),
        tasks=('cls',),
        data_root=None,
        cache=reproduce.Cache(tmp_path),
        run_fn=reproduce.execute,
    )
    spec = reproduce.pretrain_spec(ctx, 'MAE', 0)
    record = ctx.get(spec)
    assert ctx.executed == [spec.key]
    assert (ctx.work_dir(spec) / 'student.pth').exists()
    assert set(record['metrics']) == {'knn', 'linear'}
    assert all(0.0 <= v <= 1.0 for v in record['metrics'].values())
    assert json.loads(ctx.cache.json_path(spec).read_text())['metrics'] == record['metrics']
    assert ctx.get(spec) == record and ctx.executed == [spec.key]


def test_help_runs():
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'reproduce.py'), '--help'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for flag in ('--tasks', '--seeds', '--quick', '--work-dir', '--data-root', '--only-report'):
        assert flag in proc.stdout


def test_bad_seeds_is_an_error():
    with pytest.raises(SystemExit):
        reproduce.parse_args(['--seeds', '0'])


def test_budget_overrides_change_the_runs():
    scale = reproduce.apply_budget(reproduce.QUICK, ['pre_epochs=3', 'canvases=20,10'])
    assert (scale.pre_epochs, scale.canvases, scale.ft_epochs) == (3, (20, 10), 2)
    assert reproduce.apply_budget(reproduce.QUICK, []) is reproduce.QUICK
    for bad in (['pre_epochs=x'], ['nope=1'], ['canvases=3'], ['pre_epochs=0']):
        with pytest.raises(ValueError, match='--budget'):
            reproduce.apply_budget(reproduce.QUICK, bad)
