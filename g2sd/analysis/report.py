"""Statistics, markdown tables and figures of the G2SD reproduction report.

The reproduction of G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) runs every configuration with several seeds and
keeps one result JSON per run; this module turns those per-seed metrics into the report: mean
and sample standard deviation over seeds, markdown tables (with an optional column saying
whether each step of an ordering, e.g. MAE < MAE + SD < G2SD, is larger than the seed spread),
ablation figures with error bars, training curves read from mmengine's ``LocalVisBackend``
scalars (``<work_dir>/<timestamp>/vis_data/scalars.json``) and the throughput vs accuracy plot.

Pure functions, torch-free; matplotlib (Agg backend) is imported only by the figure functions.
Metrics are fractions in [0, 1]; ``scale`` (default 100) turns them into percentages.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    'ablation_figure',
    'curves_figure',
    'find_scalars',
    'fmt_mean_std',
    'mean_std',
    'read_scalars',
    'table',
    'throughput_accuracy_figure',
]

#: Column of :func:`table` with ``ordering``.
ORDERING_COLUMN = 'step vs spread'


def _values(values: Sequence[float]) -> list[float]:
    """``values`` as floats, refusing non-numbers and non-finite numbers."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f'expected a number, got {v!r}')
        if not math.isfinite(v):
            raise ValueError(f'expected a finite number, got {v!r}')
        out.append(float(v))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of per-seed values.

    Args:
        values: One value per seed.

    Returns:
        ``(mean, std)``; ``std`` is 0.0 when there is one value.

    Raises:
        ValueError: ``values`` is empty or holds a non-finite number.
        TypeError: A value is not a number.
    """
    vals = _values(values)
    if not vals:
        raise ValueError('mean_std needs at least one value, got none')
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var)


def fmt_mean_std(values: Sequence[float], *, scale: float = 100.0, digits: int = 2) -> str:
    """``'mean ± std'`` of ``values`` times ``scale``; one value: just the value.

    Args:
        values: One value per seed (fractions, shown as percentages with the default scale).
        scale: Factor applied to mean and std.
        digits: Decimals.

    Returns:
        E.g. ``'72.00 ± 2.00'`` for ``[0.70, 0.72, 0.74]``; ``'71.23'`` for ``[0.7123]``;
        ``'-'`` for no values.
    """
    if len(values) == 0:
        return '-'
    mean, std = mean_std(values)
    if len(values) == 1:
        return f'{mean * scale:.{digits}f}'
    return f'{mean * scale:.{digits}f} ± {std * scale:.{digits}f}'


def _column(seeds: Sequence[Mapping[str, float]], metric: str) -> list[float]:
    """The values of ``metric`` over the per-seed dicts that have it."""
    return [s[metric] for s in seeds if metric in s and s[metric] is not None]


def _step(prev: list[float], cur: list[float], scale: float, digits: int) -> str:
    """``'+1.20 > 0.45: yes'``: mean step from ``prev`` to ``cur`` vs the larger std."""
    if not prev or not cur:
        return '-'
    if len(prev) == 1 or len(cur) == 1:
        return 'n=1'
    (m0, s0), (m1, s1) = mean_std(prev), mean_std(cur)
    delta = round((m1 - m0) * scale, digits)
    spread = round(max(s0, s1) * scale, digits)
    if abs(delta) > spread:
        op, verdict = '>', 'yes'
    else:
        op, verdict = ('=' if abs(delta) == spread else '<'), 'no'
    return f'{delta:+.{digits}f} {op} {spread:.{digits}f}: {verdict}'


def table(
    title: str,
    metrics: Sequence[str],
    rows: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    ordering: str | None = None,
    scale: float = 100.0,
    note: str = '',
) -> str:
    """A markdown table of mean ± std over seeds, one row per method.

    Args:
        title: Heading (``'### title'``).
        metrics: Metric names, one column each, in this order.
        rows: Method label -> one dict of metric values per seed (rows in the mapping's order).
            A metric missing from every seed of a row shows ``'-'``.
        ordering: A metric of ``metrics``: add a column ``'step vs spread'`` saying, for each
            row after the first, the step of that metric's mean from the previous row and
            whether it is larger than the seed spread ``max(std_prev, std_cur)``
            (``'+1.20 > 0.45: yes'``, ``'+0.10 < 0.45: no'``; ``'n=1'`` when a row has one
            seed, ``'-'`` when the metric is missing).
        scale: Factor of the shown values (100: fractions as percentages).
        note: A line under the table (omitted when empty).

    Returns:
        The markdown text, ending with a newline.

    Raises:
        ValueError: ``ordering`` is not one of ``metrics``, or a value is not finite.
    """
    metrics = list(metrics)
    if ordering is not None and ordering not in metrics:
        raise ValueError(f'ordering metric {ordering!r} is not one of the metrics {metrics}')
    header = ['method', *metrics, 'n seeds']
    if ordering is not None:
        header.append(f'{ORDERING_COLUMN} ({ordering})')
    lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |']
    lines.append('|' + '|'.join('---' for _ in header) + '|')
    prev: list[float] | None = None
    for label, seeds in rows.items():
        cells = [str(label)]
        cells += [fmt_mean_std(_column(seeds, m), scale=scale) for m in metrics]
        cells.append(str(len(seeds)))
        if ordering is not None:
            cur = _column(seeds, ordering)
            cells.append('-' if prev is None else _step(prev, cur, scale, 2))
            prev = cur
        lines.append('| ' + ' | '.join(cells) + ' |')
    if note:
        lines += ['', note]
    return '\n'.join(lines) + '\n'


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> None:
    """Write ``fig`` as a PNG to ``out`` (parents created) and close it."""
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def ablation_figure(
    title: str,
    xlabel: str,
    points: Mapping[object, Sequence[float]],
    ylabel: str,
    out: Path,
    *,
    scale: float = 1.0,
) -> None:
    """Mean over seeds with std error bars vs an ablated setting (PNG).

    Args:
        title: Figure title.
        xlabel: Name of the ablated setting.
        points: Setting -> per-seed values, plotted in the mapping's order at evenly spaced
            positions labelled ``str(setting)`` (numbers and categories alike).
        ylabel: Y axis label.
        out: PNG path.
        scale: Factor of the plotted values (default 1: as given; 100 turns fractions into
            percentages).

    Raises:
        ValueError: ``points`` is empty or a setting has no values.
    """
    if not points:
        raise ValueError(f'ablation_figure {title!r}: no points')
    labels, means, stds = [], [], []
    for x, vals in points.items():
        if len(vals) == 0:
            raise ValueError(f'ablation_figure {title!r}: setting {x!r} has no values')
        m, s = mean_std(vals)
        labels.append(str(x))
        means.append(m * scale)
        stds.append(s * scale)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    pos = list(range(len(labels)))
    ax.errorbar(pos, means, yerr=stds, marker='o', capsize=4)
    ax.set_xticks(pos, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    n = sorted({len(v) for v in points.values()})
    seeds = '/'.join(str(k) for k in n)
    ax.set_title(f'{title} (mean ± std, {seeds} seed{"s" if n != [1] else ""})')
    ax.grid(alpha=0.3)
    _save(fig, out)


def find_scalars(work_dir: Path) -> Path:
    """The newest ``<work_dir>/<timestamp>/vis_data/scalars.json`` of an mmengine run.

    Args:
        work_dir: A run's work dir (or the scalars file itself).

    Raises:
        FileNotFoundError: There is none.
    """
    work_dir = Path(work_dir)
    if work_dir.is_file():
        return work_dir
    files = sorted(work_dir.glob('*/vis_data/scalars.json')) or sorted(
        work_dir.glob('vis_data/scalars.json')
    )
    if not files:
        raise FileNotFoundError(
            f'no vis_data/scalars.json under {work_dir} (LocalVisBackend writes it during training)'
        )
    return files[-1]  # timestamps sort chronologically


def read_scalars(path: Path, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` in an mmengine ``scalars.json`` (one JSON object a line).

    Args:
        path: The ``scalars.json`` file.
        key: Scalar name (``'loss'``, ``'lr'``, ...).
    """
    steps, values = [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if key in rec and 'step' in rec:
            steps.append(float(rec['step']))
            values.append(float(rec[key]))
    return steps, values


def curves_figure(runs: Mapping[str, Path], out: Path, key: str = 'loss', title: str = '') -> None:
    """Training curves of ``key`` vs iteration from each run's LocalVisBackend scalars (PNG).

    Args:
        runs: Legend label -> work dir (see :func:`find_scalars`) or scalars file.
        out: PNG path.
        key: Scalar to plot; a positive ``loss`` is drawn on a log axis.
        title: Figure title.

    Runs without a ``scalars.json`` or without ``key`` in it are left out with a warning.

    Raises:
        ValueError: No run logged ``key``.
    """
    curves = {}
    for label, wd in runs.items():
        try:
            path = find_scalars(wd)
        except FileNotFoundError as e:
            logger.warning('%s: %s', label, e)
            continue
        steps, values = read_scalars(path, key)
        if not steps:
            logger.warning('%s: no %r in %s', label, key, path)
            continue
        curves[label] = (steps, values)
    if not curves:
        raise ValueError(f'no run of {sorted(runs)} logged {key!r}')
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, label=label)
    ax.set_xlabel('iteration')
    ax.set_ylabel(key)
    if key == 'loss' and all(v > 0 for _, vals in curves.values() for v in vals):
        ax.set_yscale('log')
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)


def throughput_accuracy_figure(
    points: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    xlabel: str = 'images / s',
    ylabel: str = 'top-1 (%)',
) -> None:
    """Accuracy vs inference throughput, one labelled point per model (PNG).

    Args:
        points: ``dict(name=str, throughput=float, accuracy=float[, accuracy_std=float])``,
            accuracy in the unit of ``ylabel`` (e.g. percent); ``accuracy_std`` draws an
            error bar.
        out: PNG path.
        xlabel: X axis label.
        ylabel: Y axis label.

    Raises:
        ValueError: ``points`` is empty or a point lacks ``name`` / ``throughput`` /
            ``accuracy``.
    """
    if not points:
        raise ValueError('throughput_accuracy_figure: no points')
    for p in points:
        missing = [k for k in ('name', 'throughput', 'accuracy') if k not in p]
        if missing:
            raise ValueError(f'point {dict(p)!r} lacks {missing}')
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for p in points:
        ax.errorbar(
            [p['throughput']],
            [p['accuracy']],
            yerr=[p['accuracy_std']] if p.get('accuracy_std') is not None else None,
            marker='o',
            capsize=4,
            linestyle='none',
        )
        ax.annotate(
            str(p['name']),
            (p['throughput'], p['accuracy']),
            textcoords='offset points',
            xytext=(5, 5),
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title('throughput vs accuracy')
    ax.margins(x=0.2, y=0.15)  # room for the labels
    ax.grid(alpha=0.3)
    _save(fig, out)
