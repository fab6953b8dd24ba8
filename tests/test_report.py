"""Reproduction report builder (g2sd.analysis.report): statistics, markdown, figures."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from g2sd.analysis import report
from g2sd.analysis.report import (
    ablation_figure,
    curves_figure,
    find_scalars,
    fmt_mean_std,
    mean_std,
    read_scalars,
    table,
    throughput_accuracy_figure,
)

PNG = b'\x89PNG\r\n\x1a\n'


def test_mean_std_literal_and_independent() -> None:
    m, s = mean_std([0.70, 0.72, 0.74])
    assert m == pytest.approx(0.72, abs=1e-12) and s == pytest.approx(0.02, abs=1e-12)
    assert mean_std([0.5]) == (0.5, 0.0)
    # sample std (ddof = 1): [1, 2, 3, 4] -> var = (2.25 + 0.25 + 0.25 + 2.25) / 3
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    rng = random.Random(0)
    vals = [rng.random() for _ in range(7)]
    assert mean_std(vals) == pytest.approx((statistics.fmean(vals), statistics.stdev(vals)))
    with pytest.raises(ValueError, match='none'):
        mean_std([])
    with pytest.raises(ValueError, match='nan'):
        mean_std([0.1, float('nan')])
    with pytest.raises(TypeError, match="'x'"):
        mean_std([0.1, 'x'])


def test_fmt_mean_std() -> None:
    assert fmt_mean_std([0.70, 0.72, 0.74]) == '72.00 ± 2.00'
    assert fmt_mean_std([0.7123]) == '71.23'
    assert fmt_mean_std([0.81, 0.83]) == '82.00 ± 1.41'  # std = 0.01 * sqrt(2)
    assert fmt_mean_std([41.0, 43.0], scale=1.0, digits=1) == '42.0 ± 1.4'
    assert fmt_mean_std([]) == '-'


SEEDS = {
    'MAE': [dict(knn=0.70, ft=0.80), dict(knn=0.72, ft=0.82), dict(knn=0.74, ft=0.84)],
    'MAE + SD': [dict(knn=0.75, ft=0.81), dict(knn=0.76), dict(knn=0.77, ft=0.83)],
    'G2SD': [dict(knn=0.751)],
}


def test_table_literal_with_ordering() -> None:
    out = table('Table 2', ['knn', 'ft'], SEEDS, ordering='knn', note='seeds 0, 1, 2')
    assert out == (
        '### Table 2\n'
        '\n'
        '| method | knn | ft | n seeds | step vs spread (knn) |\n'
        '|---|---|---|---|---|\n'
        '| MAE | 72.00 ± 2.00 | 82.00 ± 2.00 | 3 | - |\n'
        '| MAE + SD | 76.00 ± 1.00 | 82.00 ± 1.41 | 3 | +4.00 > 2.00: yes |\n'
        '| G2SD | 75.10 | - | 1 | n=1 |\n'
        '\n'
        'seeds 0, 1, 2\n'
    )


def test_table_without_ordering_and_missing_metric() -> None:
    out = table('t', ['knn', 'mIoU'], {'a': [dict(knn=0.5), dict(knn=0.7)], 'b': []})
    assert out == (
        '### t\n'
        '\n'
        '| method | knn | mIoU | n seeds |\n'
        '|---|---|---|---|\n'
        '| a | 60.00 ± 14.14 | - | 2 |\n'
        '| b | - | - | 0 |\n'
    )


def test_ordering_steps_no_equal_negative_and_missing() -> None:
    rows = {
        'A': [dict(m=0.70), dict(m=0.72), dict(m=0.74)],  # 72 ± 2
        'B': [dict(m=0.71), dict(m=0.73), dict(m=0.75)],  # 73 ± 2: +1 within the spread
        'C': [dict(m=0.60), dict(m=0.61), dict(m=0.62)],  # 61 ± 1: -12 beyond max(2, 1)
        'D': [dict(m=0.62), dict(m=0.63), dict(m=0.64)],  # 63 ± 1: +2 vs 1
        'E': [dict(m=0.64), dict(m=0.65), dict(m=0.66)],  # 65 ± 1: +2 vs 1
        'F': [dict(other=0.5)],
    }
    lines = table('o', ['m'], rows, ordering='m').splitlines()[4:]
    assert [line.rsplit('|', 2)[1].strip() for line in lines] == [
        '-',
        '+1.00 < 2.00: no',
        '-12.00 > 2.00: yes',
        '+2.00 > 1.00: yes',
        '+2.00 > 1.00: yes',
        '-',
    ]
    eq = table('e', ['m'], {'A': rows['A'], 'G': [dict(m=0.72), dict(m=0.74), dict(m=0.76)]})
    assert '| 74.00 ± 2.00 | 3 |' in eq
    eq = table('e', ['m'], {'A': rows['A'], 'G': [dict(m=0.72), dict(m=0.74), dict(m=0.76)]},
               ordering='m')  # fmt: skip
    assert eq.splitlines()[-1].endswith('| +2.00 = 2.00: no |')
    with pytest.raises(ValueError, match="'top1'"):
        table('x', ['m'], rows, ordering='top1')


def test_ablation_and_throughput_figures(tmp_path: Path) -> None:
    out = tmp_path / 'fig' / 'ablation.png'
    ablation_figure('mask ratio', 'mask ratio', {0.5: [70.0, 72.0], 'all': [71.0]}, 'k-NN', out)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="'all'"):
        ablation_figure('t', 'x', {'all': []}, 'y', tmp_path / 'e.png')
    out = tmp_path / 'tp.png'
    throughput_accuracy_figure(
        [
            dict(name='student', throughput=5000.0, accuracy=75.0, accuracy_std=1.0),
            dict(name='teacher', throughput=1200.0, accuracy=79.0),
        ],
        out,
    )
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    with pytest.raises(ValueError, match='accuracy'):
        throughput_accuracy_figure([dict(name='a', throughput=1.0)], tmp_path / 'x.png')


def write_scalars(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_curves_figure_reads_local_vis_backend_scalars(tmp_path: Path) -> None:
    a, b = tmp_path / 'run_a', tmp_path / 'run_b'
    # An older run of run_a (an interrupted first attempt) and the newest one.
    write_scalars(a / '20260101_000000/vis_data/scalars.json', [dict(loss=9.0, step=1)])
    write_scalars(
        a / '20260102_000000/vis_data/scalars.json',
        [
            dict(lr=0.001, loss=1.5, step=10),
            dict(lr=0.002, loss=1.25, step=20),
            dict(accuracy=0.5, step=1),  # a validation record without a loss
        ],
    )
    write_scalars(b / '20260102_000000/vis_data/scalars.json', [dict(loss=2.0, step=10)])
    assert find_scalars(a) == a / '20260102_000000/vis_data/scalars.json'
    assert read_scalars(find_scalars(a), 'loss') == ([10.0, 20.0], [1.5, 1.25])
    assert read_scalars(find_scalars(a), 'lr') == ([10.0, 20.0], [0.001, 0.002])
    out = tmp_path / 'curves.png'
    empty = tmp_path / 'no_scalars'
    empty.mkdir()
    curves_figure({'A': a, 'B': b, 'missing': empty}, out, key='loss', title='pre-training')
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match='no_scalars'):
        find_scalars(empty)
    with pytest.raises(ValueError, match="'accuracy_top1'"):
        curves_figure({'A': a}, tmp_path / 'none.png', key='accuracy_top1')
    assert not (tmp_path / 'none.png').exists()


def test_exports() -> None:
    import g2sd.analysis as analysis

    for name in ('mean_std', 'fmt_mean_std', 'table', 'ablation_figure', 'curves_figure'):
        assert getattr(analysis, name) is getattr(report, name)
