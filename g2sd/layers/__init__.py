"""Low-level building blocks shared by the models and the checkpoint loader (torch only)."""

from g2sd.layers.pos_embed import (
    get_2d_sincos_pos_embed,
    resample_pos_embed,
    resample_rel_pos,
    resample_rel_pos_bias_table,
    to_2tuple,
)
from g2sd.layers.rel_pos import (
    decomposed_rel_pos_bias,
    get_rel_pos,
    relative_position_index,
    window_partition,
    window_unpartition,
)

__all__ = [
    'decomposed_rel_pos_bias',
    'get_2d_sincos_pos_embed',
    'get_rel_pos',
    'relative_position_index',
    'resample_pos_embed',
    'resample_rel_pos',
    'resample_rel_pos_bias_table',
    'to_2tuple',
    'window_partition',
    'window_unpartition',
]
