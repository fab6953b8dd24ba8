"""g2sd: Generic-to-Specific Distillation of masked-autoencoder ViTs.

Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023
(arXiv 2302.14771). ``import g2sd`` loads only torch / timm / mmengine; the mmdet and
mmseg plugins live in ``g2sd.det`` and ``g2sd.seg`` and are imported by configs.
"""

__version__ = '0.1.0'
