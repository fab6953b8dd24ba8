"""mmengine optimiser adapters: layer-decay constructor and a CPU bf16 AMP wrapper.

Used by the fine-tuning stages of G2SD (Huang et al., "Generic-to-Specific Distillation of
Masked Autoencoders", CVPR 2023, arXiv 2302.14771): layer decay 0.75 / 0.7 / 0.65 for
classification / detection / segmentation. The group computation is the pure function
:func:`g2sd.optim.layer_decay_param_groups`; this module only adapts it to mmengine.

Config::

    optim_wrapper = dict(
        type='AmpOptimWrapper',
        constructor='g2sd.LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999)),
        paramwise_cfg=dict(layer_decay_rate=0.75, no_weight_decay=('rel_pos',)),
    )

ViTDet detection (detectron2's weight decay: norms and ``pos_embed`` 0, biases decayed)::

    optim_wrapper = dict(
        type='AmpOptimWrapper',
        constructor='g2sd.LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999)),
        paramwise_cfg=dict(layer_decay_rate=0.7, weight_decay_rule='detectron2'),
    )
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from torch import nn

from g2sd.optim.layer_decay import layer_decay_param_groups
from g2sd.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

__all__ = ['CPUAmpOptimWrapper', 'LayerDecayOptimWrapperConstructor', 'format_group_table']

_PARAMWISE_KEYS = frozenset(
    {'layer_decay_rate', 'no_weight_decay', 'custom_keys', 'weight_decay_rule'}
)


def format_group_table(groups: list[dict[str, Any]]) -> str:
    """One line per parameter group: name, layer id, lr scale, lr, weight decay, sizes."""
    lines = [
        f'{"group":<28} {"layer":>5} {"lr_scale":>9} {"lr":>10} {"wd":>7} {"#t":>4} {"#p":>10}'
    ]
    for g in groups:
        numel = sum(p.numel() for p in g['params'])
        lines.append(
            f'{g["group_name"]:<28} {g["layer_id"]:>5} {g["lr_scale"]:>9.4g} {g["lr"]:>10.3e} '
            f'{g["weight_decay"]:>7.3g} {len(g["params"]):>4} {numel:>10}'
        )
    return '\n'.join(lines)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with BEiT / MAE layer-wise lr decay.

    Layer ids come from the model's own ``get_layer_depth`` (see
    :func:`g2sd.optim.layer_decay_param_groups` for the module walk and the weight-decay
    rules); no ``num_layers`` knob. The group table is logged once, on rank 0.

    Args:
        optim_wrapper_cfg: The ``optim_wrapper`` config; ``optimizer.lr`` is the top-layer
            lr and ``optimizer.weight_decay`` the decay of decayed groups.
        paramwise_cfg: ``dict(layer_decay_rate=float, no_weight_decay=tuple[str, ...],
            custom_keys=dict[str, dict(lr_mult=..., decay_mult=...)],
            weight_decay_rule='default' | 'detectron2' | 'detectron2_all_norms')``;
            ``layer_decay_rate`` is required (see
            :func:`g2sd.optim.layer_decay_param_groups`).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        unknown = set(self.paramwise_cfg) - _PARAMWISE_KEYS
        if unknown:
            raise ValueError(
                f'unknown paramwise_cfg keys {sorted(unknown)} for '
                f'g2sd.LayerDecayOptimWrapperConstructor; known: {sorted(_PARAMWISE_KEYS)}'
            )
        if 'layer_decay_rate' not in self.paramwise_cfg:
            raise ValueError(
                'g2sd.LayerDecayOptimWrapperConstructor needs paramwise_cfg.layer_decay_rate, '
                f'got paramwise_cfg={self.paramwise_cfg!r}'
            )
        if self.base_lr is None:
            raise ValueError(f'optimizer.lr must be set, got optimizer={self.optimizer_cfg!r}')

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optimizer over layer-decay groups and wrap it."""
        groups = layer_decay_param_groups(
            model,
            base_lr=float(self.base_lr),
            weight_decay=float(self.base_wd or 0.0),
            layer_decay_rate=float(self.paramwise_cfg['layer_decay_rate']),
            no_weight_decay=tuple(self.paramwise_cfg.get('no_weight_decay', ())),
            custom_keys=self.paramwise_cfg.get('custom_keys'),
            weight_decay_rule=self.paramwise_cfg.get('weight_decay_rule', 'default'),
        )
        if is_main_process():
            print_log(
                f'layer-decay parameter groups (rate {self.paramwise_cfg["layer_decay_rate"]}):\n'
                + format_group_table(groups),
                logger='current',
                level=logging.INFO,
            )
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            with MMENGINE_OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cfg['type'])
            if optimizer_cls is None:
                raise ValueError(f'unknown optimizer type {optimizer_cfg["type"]!r}')
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg[first_arg] = groups
        optimizer = MMENGINE_OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        return MMENGINE_OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on CPU: ``torch.autocast('cpu', dtype=bfloat16)`` around forward.

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts that a GPU/NPU/MLU is present, so it
    cannot run on CPU; ``tools/train.py --amp`` picks this wrapper when CUDA is absent.
    bf16 has fp32's exponent range, so no loss scaling is done.

    Args:
        dtype: Autocast dtype; only ``'bfloat16'`` is supported on CPU.
        loss_scale: Accepted for config compatibility with ``AmpOptimWrapper`` and
            ignored (bf16 needs no scaling).
        **kwargs: Passed to ``OptimWrapper`` (``optimizer``, ``accumulative_counts``,
            ``clip_grad``).
    """

    def __init__(
        self,
        dtype: str | torch.dtype = 'bfloat16',
        loss_scale: str | float | dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(f"CPU autocast supports dtype='bfloat16' only, got {dtype!r}")
        self.cast_dtype = torch.bfloat16
        self.loss_scale = loss_scale

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """Gradient-accumulation context of ``OptimWrapper`` plus bf16 CPU autocast."""
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
