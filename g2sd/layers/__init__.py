"""Low-level building blocks shared by the models and the checkpoint loader (torch only)."""

from g2sd.layers.pos_embed import get_2d_sincos_pos_embed, resample_pos_embed, to_2tuple

__all__ = ['get_2d_sincos_pos_embed', 'resample_pos_embed', 'to_2tuple']
