"""Optimisation helpers: layer-wise lr decay from the model's own layer depth.

G2SD, Huang et al., CVPR 2023, arXiv 2302.14771.
"""

from g2sd.optim.layer_decay import (
    BACKBONE_ATTRS,
    DETECTRON2_NORM_TYPES,
    WEIGHT_DECAY_RULES,
    find_layer_depth_module,
    layer_decay_param_groups,
)

__all__ = [
    'BACKBONE_ATTRS',
    'DETECTRON2_NORM_TYPES',
    'WEIGHT_DECAY_RULES',
    'find_layer_depth_module',
    'layer_decay_param_groups',
]
