"""The one checkpoint loader / converter of g2sd.

Every weight file enters the suite here: the G2SD teachers and students, the timm
registration (``g2sd.models.timm_models``), the mmdet / mmseg backbones and the tools in
``tools/convert``. It fixes weakness W-1 of the official G2SD code (teachers loaded with
``strict=False``, so MAE's encoder-only release silently gives a random teacher decoder):
weights are loaded strictly, apart from a small allow-list per use, and a decoder-less
teacher is refused with a message that says what to download instead.

Reading (:func:`load_file`)
    ``.pth`` / ``.pt`` / ``.bin`` (or any other suffix) go through
    ``torch.load(map_location='cpu', weights_only=True)`` with ``argparse.Namespace``
    allow-listed (MAE and official G2SD files carry ``{'model': ..., 'args': Namespace}``).
    Our own mmengine training checkpoints also hold mmengine's ``HistoryBuffer`` and numpy
    arrays / scalars in ``message_hub``; ``trusted=True`` allow-lists the numpy data globals
    and maps ``HistoryBuffer`` (and the ``getattr`` its pickle uses) to inert stand-ins
    (still ``weights_only=True``, so no code from the file ever runs). Anything else is
    refused, naming the globals. ``.safetensors`` files are read with safetensors.

Formats (:func:`detect_format`), decided from key patterns after unwrapping
(``state_dict`` / ``model`` / ``module`` nesting, ``module.`` / ``_orig_mod.`` /
``algorithm.`` prefixes shared by every key):

================== ===========================================================================
format             key pattern
================== ===========================================================================
g2sd_distiller     any ``student.*`` key (our distillers: ``student.*`` plus ``projector.*`` etc.)
g2sd_official_gd   ``decoderfeature_pred.*`` or ``encoderfeature_pred.*`` (official GD student:
                   MAE keys + the two projection MLPs)
mae_full           ``mask_token`` or any ``decoder_*`` key (MAE encoder + decoder,
                   e.g. ``mae_pretrain_vit_base_full.pth``, ``mae_visualize_vit_base.pth``)
timm               ``head.weight`` and no ``fc_norm.*`` (ViT with ``norm`` and a token head)
mae_encoder        any other ViT (``patch_embed.proj.weight``): the encoder-only MAE release
                   ``mae_pretrain_vit_*.pth``, MAE fine-tuned (``fc_norm`` + ``head``), our
                   extracted backbones, headless timm ViTs
================== ===========================================================================

All formats share the timm / MAE encoder layout (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*`` / ``fc_norm.*``, ``head.*``), so the
conversions below only select and rename prefixes.

Loading (:func:`load_state_dict_strict`, :func:`load_pretrained`) verifies missing,
unexpected and shape-mismatched keys against fnmatch allow-lists, resamples ``pos_embed`` /
``decoder_pos_embed`` to the model's grid, raises :class:`CheckpointError` for anything not
allowed, and logs a one-screen summary.
"""

from g2sd.checkpoint._common import CheckpointError
from g2sd.checkpoint.formats import (
    FORMATS,
    detect_format,
    extract_state_dict,
    official_gd_to_distiller,
    to_encoder_state_dict,
)
from g2sd.checkpoint.loading import (
    USES,
    LoadReport,
    load_pretrained,
    load_state_dict_strict,
    prepare_backbone_state_dict,
)
from g2sd.checkpoint.reading import MMEngineStateStub, load_file
from g2sd.checkpoint.saving import atomic_save, save_state_dict

__all__ = [
    'FORMATS',
    'MMEngineStateStub',
    'USES',
    'CheckpointError',
    'LoadReport',
    'atomic_save',
    'detect_format',
    'extract_state_dict',
    'load_file',
    'load_pretrained',
    'load_state_dict_strict',
    'official_gd_to_distiller',
    'prepare_backbone_state_dict',
    'save_state_dict',
    'to_encoder_state_dict',
]
