"""Image pipelines for g2sd datasets: torchvision transforms built from config dicts.

Pre-training in G2SD (Huang et al., "Generic-to-Specific Distillation of Masked
Autoencoders", CVPR 2023, arXiv 2302.14771) uses ``RandomResizedCrop(224, scale=(0.2, 1),
bicubic)`` + flip; TinyMIM's relation distillation feeds the teacher and the student two
views of one crop, the student's with ``ColorJitter(0.4)`` (:class:`TwoViews`).

Every name here is registered in g2sd's ``TRANSFORMS`` registry, so configs write
``dict(type='RandomResizedCrop', size=224, scale=(0.2, 1.0), interpolation='bicubic')``
inside g2sd datasets. :func:`build_pipeline` looks names up in g2sd's own registry only
(never the default scope's, where mmcv registers transforms with the same names).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from g2sd.registry import TRANSFORMS

__all__ = ['TwoViews', 'build_pipeline', 'build_transform', 'known_transforms']

_INTERPOLATIONS = {m.value: m for m in InterpolationMode}

# torchvision transform classes exposed under their own names.
_TORCHVISION = (
    'RandomResizedCrop',
    'RandomHorizontalFlip',
    'RandomVerticalFlip',
    'Resize',
    'CenterCrop',
    'RandomCrop',
    'ColorJitter',
    'RandomGrayscale',
    'Grayscale',
    'GaussianBlur',
    'RandomApply',
    'RandAugment',
    'ToTensor',
    'Normalize',
    'RandomErasing',
    'PILToTensor',
    'ConvertImageDtype',
)


def _to_interpolation(value: str | InterpolationMode) -> InterpolationMode:
    if isinstance(value, InterpolationMode):
        return value
    if isinstance(value, str) and value.lower() in _INTERPOLATIONS:
        return _INTERPOLATIONS[value.lower()]
    raise ValueError(f'unknown interpolation {value!r}; known: {sorted(_INTERPOLATIONS)}')


def _make_factory(name: str, cls: type) -> Callable[..., Any]:
    def factory(**kwargs: Any) -> Any:
        if 'interpolation' in kwargs:
            kwargs['interpolation'] = _to_interpolation(kwargs['interpolation'])
        for key in ('size', 'scale', 'ratio', 'mean', 'std', 'kernel_size', 'sigma'):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        if name == 'RandomApply':
            kwargs['transforms'] = [build_transform(t) for t in kwargs.get('transforms', [])]
        try:
            return cls(**kwargs)
        except TypeError as err:
            sig = inspect.signature(cls)
            raise TypeError(f'bad arguments {kwargs!r} for {name}{sig}: {err}') from err

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f'``torchvision.transforms.{name}``; ``interpolation`` may be a string '
        f'({", ".join(sorted(_INTERPOLATIONS))}).'
    )
    return factory


for _name in _TORCHVISION:
    TRANSFORMS.register_module(name=_name, module=_make_factory(_name, getattr(T, _name)))


def known_transforms() -> list[str]:
    """Names registered in g2sd's ``TRANSFORMS`` registry."""
    return sorted(TRANSFORMS.module_dict)


def build_transform(cfg: dict | Callable[..., Any]) -> Callable[..., Any]:
    """Build one transform from ``dict(type=name, **kwargs)`` (callables pass through).

    Args:
        cfg: Config dict; ``type`` is a name registered in g2sd's ``TRANSFORMS`` (optionally
            prefixed ``g2sd.``) or a callable class.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
        TypeError: ``cfg`` is neither a dict nor a callable, or has no ``type``.
    """
    if callable(cfg) and not isinstance(cfg, dict):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f'a transform config must be a dict or callable, got {cfg!r}')
    if 'type' not in cfg:
        raise TypeError(f'transform config has no "type": {cfg!r}')
    args = dict(cfg)
    kind = args.pop('type')
    if isinstance(kind, str):
        name = kind[len('g2sd.') :] if kind.startswith('g2sd.') else kind
        builder = TRANSFORMS.module_dict.get(name)
        if builder is None:
            raise ValueError(f'unknown transform {kind!r}; known: {", ".join(known_transforms())}')
    elif callable(kind):
        builder = kind
    else:
        raise TypeError(f'transform type must be a name or a class, got {kind!r}')
    return builder(**args)


def build_pipeline(cfgs: Sequence[dict | Callable[..., Any]] | None) -> Callable[..., Any]:
    """Compose transforms from a list of config dicts (``None`` / empty -> identity).

    Args:
        cfgs: e.g. ``[dict(type='RandomResizedCrop', size=224, scale=(0.2, 1.0),
            interpolation='bicubic'), dict(type='RandomHorizontalFlip'),
            dict(type='ToTensor'), dict(type='Normalize', mean=..., std=...)]``.

    Returns:
        A ``torchvision.transforms.Compose``.
    """
    if cfgs is None:
        return T.Compose([])
    if isinstance(cfgs, dict) or not isinstance(cfgs, Sequence):
        raise TypeError(f'a pipeline must be a list of transform configs, got {cfgs!r}')
    return T.Compose([build_transform(c) for c in cfgs])


@TRANSFORMS.register_module()
class TwoViews:
    """Two views of one image for teacher / student (TinyMIM relation distillation).

    ``common`` runs once (shared crop and flip), then ``teacher`` and ``student`` each
    turn the shared image into a tensor; the result is stacked as (2, C, H, W) with
    ``[0]`` the teacher view and ``[1]`` the student view.

    Args:
        common: Shared transforms (on the PIL image).
        teacher: Teacher-view transforms, ending with ToTensor / Normalize.
        student: Student-view transforms (TinyMIM adds ``ColorJitter(0.4, 0.4, 0.4)``),
            ending with ToTensor / Normalize.
    """

    def __init__(
        self,
        common: Sequence[dict | Callable[..., Any]] = (),
        teacher: Sequence[dict | Callable[..., Any]] = (),
        student: Sequence[dict | Callable[..., Any]] = (),
    ) -> None:
        self.common = build_pipeline(list(common))
        self.teacher = build_pipeline(list(teacher))
        self.student = build_pipeline(list(student))

    def __call__(self, img: Any) -> torch.Tensor:
        shared = self.common(img)
        views = [self.teacher(shared), self.student(shared)]
        for tag, v in zip(('teacher', 'student'), views):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f'the {tag} view must end with ToTensor, got {type(v).__name__}')
        if views[0].shape != views[1].shape:
            raise ValueError(
                f'teacher and student views differ in shape: {tuple(views[0].shape)} vs '
                f'{tuple(views[1].shape)}'
            )
        return torch.stack(views)

    def __repr__(self) -> str:
        return f'TwoViews(common={self.common}, teacher={self.teacher}, student={self.student})'
