"""Models: the one ViT and the MAE encoder-decoder (timm / MAE key layout)."""

from g2sd.models import timm_models  # noqa: F401  (registers g2sd_vit_* in timm)
from g2sd.models.mae import MAEEncoderOutput, MaskedAutoencoderViT, random_masking
from g2sd.models.vit import (
    QKV,
    Attention,
    Block,
    VisionTransformer,
    get_2d_sincos_pos_embed,
    resample_pos_embed,
)

__all__ = [
    'QKV',
    'Attention',
    'Block',
    'MAEEncoderOutput',
    'MaskedAutoencoderViT',
    'VisionTransformer',
    'get_2d_sincos_pos_embed',
    'random_masking',
    'resample_pos_embed',
]
