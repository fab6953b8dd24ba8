"""Representation analyses of G2SD students (Huang et al., CVPR 2023, arXiv 2302.14771).

Torch-only functions behind the ``tools/analysis/`` command-line tools: linear CKA between
the blocks of a student and its teacher (:mod:`g2sd.analysis.cka`), mean attention distance
per head and layer (D-MAE's analysis, :mod:`g2sd.analysis.attention_distance`) and top-1
under patch occlusion (G2SD's robustness figure, :mod:`g2sd.analysis.occlusion`). Import the
submodules directly. The reproduction report's statistics, tables and figures
(:mod:`g2sd.analysis.report`, torch-free) are also exported here.
"""

from g2sd.analysis.report import (
    ablation_figure,
    curves_figure,
    fmt_mean_std,
    mean_std,
    table,
    throughput_accuracy_figure,
)

__all__ = [
    'ablation_figure',
    'curves_figure',
    'fmt_mean_std',
    'mean_std',
    'table',
    'throughput_accuracy_figure',
]
