"""Registries of the ``g2sd`` scope (children of mmengine's root registries).

Configs name g2sd types with the scope prefix (``type='g2sd.G2SDDistiller'``) so they
resolve from mmdet / mmseg default scopes too. ``locations`` are imported lazily on the
first lookup; they never import mmcv, mmdet or mmseg.
"""

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

_MODEL_LOCATIONS = ['g2sd.models', 'g2sd.distill', 'g2sd.engine', 'g2sd.cls']
_ENGINE_LOCATIONS = ['g2sd.engine']

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='g2sd', locations=_MODEL_LOCATIONS)
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='g2sd', locations=_ENGINE_LOCATIONS)
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, scope='g2sd', locations=_ENGINE_LOCATIONS
)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='g2sd', locations=_ENGINE_LOCATIONS)
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope='g2sd', locations=_ENGINE_LOCATIONS)
OPTIM_WRAPPERS = Registry(
    'optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='g2sd', locations=_ENGINE_LOCATIONS
)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='g2sd',
    locations=_ENGINE_LOCATIONS,
)
PARAM_SCHEDULERS = Registry(
    'parameter scheduler',
    parent=MMENGINE_PARAM_SCHEDULERS,
    scope='g2sd',
    locations=_ENGINE_LOCATIONS,
)
METRICS = Registry(
    'metric', parent=MMENGINE_METRICS, scope='g2sd', locations=[*_ENGINE_LOCATIONS, 'g2sd.cls']
)
