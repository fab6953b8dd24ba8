"""ViTDet's simple feature pyramid and channel LayerNorm for the G2SD detectors.

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) builds its Mask R-CNN students and teachers on ViTDet (Li et al.,
"Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022): the
single stride-16 map of the plain ViT is turned into P2..P6 by deconvolutions / max
pooling, a 1x1 and a 3x3 convolution with channel LayerNorm per level, and a stride-2
max pool of the last level (detectron2 ``SimpleFeaturePyramid`` + ``LastLevelMaxPool``).
Numerics and initialisation follow detectron2; module names follow mmcv / mmdet
(``lateral_convs`` / ``fpn_convs`` ConvModules), see :class:`SimpleFPN` for the mapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from g2sd.registry import MODELS

__all__ = ['LN2d', 'SimpleFPN']


@MODELS.register_module()
class LN2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (detectron2 ``LayerNorm``).

    ``y = weight[c] * (x - mean_c(x)) / sqrt(var_c(x) + eps) + bias[c]`` with the biased
    variance over C at every position. ``_abbr_ = 'ln'`` makes mmcv's ConvModule name it
    ``ln`` (keys ``ln.weight``, ``ln.bias``).

    Args:
        num_channels: Channels C.
        eps: Added to the variance.
    """

    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f'num_channels must be a positive int, got {num_channels!r}')
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f'expected (B, {self.num_channels}, H, W), got {tuple(x.shape)}')
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f'{self.num_channels}, eps={self.eps}'


def _scale_layers(dim: int, scale: float, norm_cfg: dict) -> tuple[nn.Sequential, int]:
    """The resampling part of one pyramid level and its output channels.

    Up by 2^k: k stride-2 deconvolutions halving the channels, with norm + GELU between
    (detectron2: 4.0 -> deconv, LN, GELU, deconv). Down by 2^k: one max pool of 2^k.
    """
    if scale <= 0:
        raise ValueError(f'scale factors must be positive powers of two, got {scale!r}')
    k = math.log2(scale)
    if abs(k - round(k)) > 1e-9:
        raise ValueError(f'scale factors must be powers of two, got {scale!r}')
    k = round(k)
    layers: list[nn.Module] = []
    out = dim
    if k > 0:
        if dim % (2**k):
            raise ValueError(f'backbone_channel {dim} is not divisible by scale {scale!r}')
        for j in range(k):
            if j > 0:
                layers.append(_build_norm(norm_cfg, out))
                layers.append(nn.GELU())
            layers.append(nn.ConvTranspose2d(out, out // 2, kernel_size=2, stride=2))
            out //= 2
    elif k < 0:
        layers.append(nn.MaxPool2d(kernel_size=2**-k, stride=2**-k))
    return nn.Sequential(*layers), out


def _ln_eps(norm_cfg: dict) -> dict:
    """``norm_cfg`` with detectron2's ``eps=1e-6`` for :class:`LN2d` unless one is given.

    mmcv's ``build_norm_layer`` would otherwise pass its own default ``eps=1e-5``.
    """
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise ValueError(f"norm_cfg must be a dict with a 'type', got {norm_cfg!r}")
    cfg = dict(norm_cfg)
    kind = cfg['type']
    if kind is LN2d or (isinstance(kind, str) and kind.rsplit('.', 1)[-1] == 'LN2d'):
        cfg.setdefault('eps', 1e-6)
    return cfg


def _build_norm(norm_cfg: dict, channels: int) -> nn.Module:
    """A norm layer from ``norm_cfg`` (mmcv's registry, so ``g2sd.LN2d`` and ``BN`` both work)."""
    return build_norm_layer(norm_cfg, channels)[1]


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """detectron2's ``SimpleFeaturePyramid`` (+ ``LastLevelMaxPool``) with mmdet key names.

    Level ``l`` with scale factor s: ``scale_layers.{l}`` (an nn.Sequential: for 4.0
    ``[ConvTranspose2d(C, C/2, 2, 2), norm(C/2), GELU, ConvTranspose2d(C/2, C/4, 2, 2)]``,
    2.0 ``[ConvTranspose2d(C, C/2, 2, 2)]``, 1.0 ``[]``, 0.5 ``[MaxPool2d(2, 2)]``; other
    powers of two likewise), then ``lateral_convs.{l}`` (1x1 conv + norm, no bias) and
    ``fpn_convs.{l}`` (3x3 conv + norm, no bias). ``num_outs - len(scale_factors)`` extra
    levels are stride-2, kernel-1 max pools of the last one.

    detectron2 keys (``backbone.simfp_{stage}.{j}``) map as: ``simfp_2.{0,1,3}`` ->
    ``scale_layers.0.{0,1,3}``, ``simfp_2.4.weight`` -> ``lateral_convs.0.conv.weight``,
    ``simfp_2.4.norm.*`` -> ``lateral_convs.0.ln.*``, ``simfp_2.5`` -> ``fpn_convs.0``;
    ``simfp_3.0`` -> ``scale_layers.1.0``, ``simfp_3.{1,2}`` -> lateral / fpn 1;
    ``simfp_4.{0,1}`` -> lateral / fpn 2; ``simfp_5.{1,2}`` -> lateral / fpn 3.

    Initialisation is detectron2's: PyTorch's default for every convolution (kaiming
    uniform with ``a = sqrt(5)``, detectron2 adds no init of its own here), ones / zeros for
    the norms. An ``init_cfg`` replaces it.

    Args:
        backbone_channel: Channels C of the backbone map.
        out_channels: Channels of every output level.
        scale_factors: Resampling of each level relative to the backbone map (powers of
            two, decreasing by factors of two: the strides must be log2-contiguous).
        num_outs: Number of outputs, >= ``len(scale_factors)``.
        norm_cfg: Norm of the convolutions (and between deconvolutions); ``g2sd.LN2d``
            gets detectron2's ``eps=1e-6`` unless the config gives one (mmcv would use 1e-5).
        init_cfg: mmengine init config; None: detectron2's initialisation.

    Shapes:
        ``forward``: ((B, C, H, W),) -> num_outs maps (B, out_channels, H*s_l, W*s_l), then
        the extra levels, each half the previous (ceil).
    """

    def __init__(
        self,
        backbone_channel: int,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        num_outs: int = 5,
        norm_cfg: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        norm_cfg = _ln_eps(dict(type='g2sd.LN2d') if norm_cfg is None else norm_cfg)
        scale_factors = tuple(float(s) for s in scale_factors)
        if not scale_factors:
            raise ValueError('scale_factors must not be empty')
        for a, b in zip(scale_factors, scale_factors[1:]):
            if abs(a / b - 2.0) > 1e-9:
                raise ValueError(
                    f'scale_factors must halve from level to level (log2-contiguous strides, '
                    f'as detectron2), got {scale_factors}'
                )
        if isinstance(num_outs, bool) or not isinstance(num_outs, int):
            raise ValueError(f'num_outs must be an int, got {num_outs!r}')
        if num_outs < len(scale_factors):
            raise ValueError(
                f'num_outs {num_outs} is smaller than the {len(scale_factors)} scale factors'
            )
        self.backbone_channel = backbone_channel
        self.out_channels = out_channels
        self.scale_factors = scale_factors
        self.num_outs = num_outs
        self.scale_layers = nn.ModuleList()
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for scale in scale_factors:
            layers, dim = _scale_layers(backbone_channel, scale, norm_cfg)
            self.scale_layers.append(layers)
            self.lateral_convs.append(
                ConvModule(dim, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
            )
            self.fpn_convs.append(
                ConvModule(
                    out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=None
                )
            )
        self._detectron2_init()

    def _detectron2_init(self) -> None:
        """PyTorch default init for every (de)convolution, ones / zeros for norms."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()
            elif isinstance(m, LN2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """detectron2's initialisation, or ``init_cfg`` when one is given.

        mmcv's ConvModules re-initialise themselves (kaiming normal) inside mmengine's
        ``init_weights``; without ``init_cfg`` this restores detectron2's default init.
        """
        super().init_weights()
        if not self.init_cfg:
            self._detectron2_init()

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """((B, C, H, W),) -> tuple of ``num_outs`` maps (B, out_channels, h_l, w_l)."""
        if isinstance(inputs, torch.Tensor):
            raise TypeError('SimpleFPN takes the backbone tuple of one map, got a tensor')
        if len(inputs) != 1:
            raise ValueError(f'SimpleFPN takes one backbone map, got {len(inputs)}')
        x = inputs[0]
        if x.ndim != 4 or x.shape[1] != self.backbone_channel:
            raise ValueError(f'expected (B, {self.backbone_channel}, H, W), got {tuple(x.shape)}')
        outs = [
            fpn(lateral(scale(x)))
            for scale, lateral, fpn in zip(self.scale_layers, self.lateral_convs, self.fpn_convs)
        ]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
