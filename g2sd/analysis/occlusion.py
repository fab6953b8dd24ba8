"""Top-1 of a ViT classifier under patch occlusion (G2SD's robustness figure).

G2SD (Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023,
arXiv 2302.14771) compares how the accuracy of MAE + SD and G2SD students falls as a growing
fraction of the image patches is occluded, following the random patch drop of Naseer et al.
("Intriguing Properties of Vision Transformers", NeurIPS 2021). Two modes:

``'drop'``
    the tokens of the occluded patches are removed before the blocks (the class token and a
    distillation token are kept), through the ViT's own MAE masking
    (:meth:`g2sd.models.VisionTransformer.prepare_tokens` with a fixed noise);
``'zero'``
    the pixels of the occluded patches are set to 0 in the normalised input (the data set's
    mean colour) and the full token sequence is classified.

For a ratio r on a grid of N patches exactly ``k = round(r * N)`` patches are occluded
(Python's ``round``). Which ones is decided by one uniform noise (B, N) per image: the k
patches of largest noise, exactly those MAE's ``random_masking`` masks for the same noise.
Both modes and every model therefore see the same occluded patches, and the occluded set
of a ratio contains that of every smaller ratio. Ratio 0 (k = 0) is the plain forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    'DEFAULT_RATIOS',
    'MODES',
    'ViTOcclusionClassifier',
    'num_occluded',
    'occluded_patch_mask',
    'occlude_zero',
    'occlusion_curve',
    'occlusion_logits',
    'occlusion_noise',
]

logger = logging.getLogger(__name__)

#: Occluded fractions of the figure: 0, 0.1, ..., 0.9.
DEFAULT_RATIOS: tuple[float, ...] = tuple(i / 10 for i in range(10))
MODES: tuple[str, ...] = ('drop', 'zero')

#: ``classify_fn(images (B, C, H, W), mask_ratio=None, noise=None) -> logits (B, K)``; the
#: keyword arguments are those of ``prepare_tokens`` (used by ``'drop'`` only).
ClassifyFn = Callable[..., torch.Tensor]


def _pair(patch_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(patch_size, int) and not isinstance(patch_size, bool):
        size = (patch_size, patch_size)
    elif isinstance(patch_size, Sequence) and len(patch_size) == 2:
        size = (int(patch_size[0]), int(patch_size[1]))
    else:
        raise TypeError(f'patch_size must be an int or a pair of ints, got {patch_size!r}')
    if min(size) < 1:
        raise ValueError(f'patch_size must be positive, got {patch_size!r}')
    return size


def _grid(images: torch.Tensor, patch_size: int | Sequence[int]) -> tuple[int, int]:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f'images must be a (B, C, H, W) tensor, got '
            f'{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}'
        )
    ph, pw = _pair(patch_size)
    h, w = images.shape[-2:]
    if h % ph or w % pw:
        raise ValueError(f'image size {(h, w)} is not divisible by patch_size {(ph, pw)}')
    return h // ph, w // pw


def num_occluded(ratio: float, num_patches: int) -> int:
    """Number of occluded patches ``round(ratio * num_patches)``; at least one patch stays.

    Args:
        ratio: Occluded fraction in [0, 1).
        num_patches: Patches N of the grid.

    Raises:
        ValueError: ``ratio`` outside [0, 1) or so close to 1 that no patch would stay.
    """
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f'occlusion ratio must be in [0, 1), got {ratio!r}')
    k = round(ratio * num_patches)
    if k >= num_patches:
        raise ValueError(
            f'occlusion ratio {ratio} occludes all {num_patches} patches; use a smaller ratio'
        )
    return k


def occlusion_noise(
    batch: int, num_patches: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform noise (B, N) that decides the occluded patches (shared by models and modes)."""
    device = generator.device if generator is not None else None
    return torch.rand(batch, num_patches, generator=generator, device=device)


def occluded_patch_mask(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean (B, N) mask, True on the ``round(ratio * N)`` patches of largest noise.

    These are the patches MAE's ``random_masking`` removes for the same noise (it keeps the
    patches of smallest noise).
    """
    if noise.ndim != 2:
        raise ValueError(f'noise must be (B, N), got {tuple(noise.shape)}')
    b, n = noise.shape
    k = num_occluded(ratio, n)
    mask = torch.zeros(b, n, dtype=torch.bool, device=noise.device)
    if k:
        order = torch.argsort(noise, dim=1)
        mask.scatter_(1, order[:, n - k :], True)
    return mask


def occlude_zero(
    images: torch.Tensor,
    ratio: float,
    patch_size: int | Sequence[int],
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Copy of ``images`` with ``round(ratio * N)`` whole patches per image set to 0.

    Args:
        images: Normalised images (B, C, H, W); 0 is the mean colour.
        ratio: Occluded fraction in [0, 1).
        patch_size: Patch side (int) or (height, width) of the ViT's patches.
        generator: Seeded generator of the noise (the same seed occludes the same patches).
        noise: (B, N) noise to use instead (see :func:`occlusion_noise`).

    Returns:
        (B, C, H, W) tensor; ``images`` is not modified.
    """
    gh, gw = _grid(images, patch_size)
    ph, pw = _pair(patch_size)
    b, c, h, w = images.shape
    if noise is None:
        noise = occlusion_noise(b, gh * gw, generator)
    if noise.shape != (b, gh * gw):
        raise ValueError(f'noise must have shape {(b, gh * gw)}, got {tuple(noise.shape)}')
    mask = occluded_patch_mask(noise.to(images.device), ratio)
    if not mask.any():
        return images.clone()
    pix = mask.view(b, 1, gh, 1, gw, 1).expand(b, c, gh, ph, gw, pw).reshape(b, c, h, w)
    return images.masked_fill(pix, 0.0)


class ViTOcclusionClassifier:
    """Eval-mode logits of a g2sd ViT, plain or with its patch tokens partly dropped.

    Args:
        model: A :class:`g2sd.models.VisionTransformer` (or
            :class:`g2sd.cls.DistilledVisionTransformer`, whose eval output averages its two
            heads) or a module with such a ``backbone`` (``g2sd.ViTClassifier``). It is put
            in eval mode.

    Attributes:
        backbone: The ViT.
        patch_size: (height, width) of its patches.
    """

    def __init__(self, model: nn.Module) -> None:
        backbone = getattr(model, 'backbone', model)
        for attr in ('prepare_tokens', 'forward_encoder', 'forward_head', 'patch_embed'):
            if not hasattr(backbone, attr):
                raise TypeError(
                    f'{type(model).__name__} is not a g2sd VisionTransformer (nor has one as '
                    f'backbone): no {attr!r}'
                )
        self.backbone = backbone.eval()
        self.patch_size = _pair(tuple(backbone.patch_embed.patch_size))

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K); ``mask_ratio`` / ``noise`` drop patch tokens.

        Without ``mask_ratio`` this is exactly ``backbone(images)``; with it, the tokens
        ``prepare_tokens(images, mask_ratio, noise)`` keeps (class / distillation tokens
        included) go through the blocks, the final norm and the head.
        """
        if mask_ratio is None:
            return self.backbone(images)
        out = self.backbone.forward_encoder(images, mask_ratio=mask_ratio, noise=noise)
        return self.backbone.forward_head(out.latent)


def occlusion_logits(
    classify_fn: ClassifyFn,
    images: torch.Tensor,
    ratio: float,
    mode: Literal['drop', 'zero'],
    patch_size: int | Sequence[int],
    noise: torch.Tensor,
) -> torch.Tensor:
    """Logits (B, K) of ``images`` with a fraction ``ratio`` of their patches occluded.

    Args:
        classify_fn: See :data:`ClassifyFn` (e.g. :class:`ViTOcclusionClassifier`); for
            ``'zero'`` any ``images -> logits`` callable.
        images: Normalised images (B, C, H, W).
        ratio: Occluded fraction in [0, 1); 0 calls ``classify_fn(images)`` unchanged.
        mode: ``'drop'`` (remove the patch tokens) or ``'zero'`` (zero the pixels).
        patch_size: Patch side of the model.
        noise: (B, N) occlusion noise (:func:`occlusion_noise`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'drop' or 'zero', got {mode!r}")
    gh, gw = _grid(images, patch_size)
    n = gh * gw
    if noise.shape != (images.shape[0], n):
        raise ValueError(f'noise must have shape {(images.shape[0], n)}, got {tuple(noise.shape)}')
    k = num_occluded(ratio, n)
    if k == 0:
        return classify_fn(images)
    if mode == 'zero':
        return classify_fn(occlude_zero(images, ratio, patch_size, noise=noise))
    # MAE's masking keeps int(N * (1 - mask_ratio)) patches: (k - 0.5) / N keeps exactly N - k
    # whatever the float rounding (ratio 0.9, N = 49: int(49 * (1 - 0.9)) = 4, not 49 - 44 = 5).
    return classify_fn(images, mask_ratio=(k - 0.5) / n, noise=noise.to(images.device))


def occlusion_curve(
    classify_fn: ClassifyFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    mode: Literal['drop', 'zero'] = 'drop',
    patch_size: int | Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    noise: torch.Tensor | None = None,
) -> list[float]:
    """Top-1 (in [0, 1]) of ``classify_fn`` at every occluded fraction.

    Args:
        classify_fn: See :data:`ClassifyFn`; :class:`ViTOcclusionClassifier` also gives the
            patch size.
        images: Normalised images (M, C, H, W).
        labels: (M,) class indices.
        ratios: Occluded fractions in [0, 1).
        mode: ``'drop'`` or ``'zero'``.
        patch_size: Patch side; default ``classify_fn.patch_size``.
        seed: Seed of the occlusion noise (one row per image, independent of
            ``batch_size``); the same seed occludes the same patches for every model.
        batch_size: Images per forward pass.
        noise: (M, N) noise to use instead of ``seed``.

    Returns:
        One top-1 per ratio.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'drop' or 'zero', got {mode!r}")
    if patch_size is None:
        patch_size = getattr(classify_fn, 'patch_size', None)
        if patch_size is None:
            raise ValueError('patch_size is needed when classify_fn has no patch_size attribute')
    if labels.shape != images.shape[:1]:
        raise ValueError(f'labels {tuple(labels.shape)} do not match images {tuple(images.shape)}')
    if len(images) == 0:
        raise ValueError('images is empty')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size!r}')
    gh, gw = _grid(images, patch_size)
    if noise is None:
        noise = occlusion_noise(len(images), gh * gw, torch.Generator().manual_seed(seed))
    for r in ratios:
        num_occluded(r, gh * gw)  # refuse a bad ratio before any forward pass
    curve = []
    for r in ratios:
        correct = 0
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size]
            logits = occlusion_logits(classify_fn, x, r, mode, patch_size, noise[i : i + len(x)])
            correct += int((logits.argmax(-1).cpu() == labels[i : i + len(x)].cpu()).sum())
        curve.append(correct / len(images))
        logger.debug('occlusion %s %.2f: top-1 %.4f', mode, r, curve[-1])
    return curve
