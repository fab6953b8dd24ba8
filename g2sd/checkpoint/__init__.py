"""The one checkpoint loader / converter of g2sd.

Every weight file enters the suite here: the G2SD teachers and students, the timm
registration (``g2sd.models.timm_models``), the mmdet / mmseg backbones and the tools in
``tools/convert``. It fixes weakness W-1 of the official G2SD code (teachers loaded
non-strictly, so MAE's encoder-only release silently gives a random teacher decoder):
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
(``state_dict`` / ``model`` / ``module`` nesting; ``module.`` / ``_orig_mod.`` /
``algorithm.`` prefixes shared by every key are removed with :func:`strip_prefixes`):

================== ===========================================================================
format             key pattern
================== ===========================================================================
g2sd_distiller     any ``student.*`` key (our distillers: ``student.*`` plus ``projector.*`` etc.;
                   the SD wrapper: ``student.backbone.*`` plus adapters)
mm_backbone        ``backbone.patch_embed.proj.weight`` (mmdet / mmseg models and our
                   ``g2sd.ViTClassifier``: ``backbone.*`` plus ``neck.*``, ``decode_head.*``,
                   ``rpn_head.*``, ``head.*`` ...)
mae_lite           ``model.patch_embed.proj.weight`` (MAE-Lite / D-MAE runs, wangsr126/MAE-Lite:
                   ``model.*`` = the student (MAE with decoder, or a fine-tuned ViT), plus
                   ``tch_model.*`` / ``attn_adapter.*`` / ``hidden_adapter.*`` / ``ema_model.*``
                   in distillation runs)
g2sd_official_gd   ``decoderfeature_pred.*`` or ``encoderfeature_pred.*`` (official GD student:
                   MAE keys + the two projection MLPs)
mae_full           ``mask_token`` or any ``decoder_*`` key (MAE encoder + decoder,
                   e.g. ``mae_pretrain_vit_base_full.pth``, ``mae_visualize_vit_base.pth``)
deit_distilled     ``dist_token`` with its position inside ``pos_embed`` (1, 2 + N, C): timm
                   ``deit_*_distilled``, TinyMIM*-T (``TinyMIM-FT-Tstar.pth``)
timm               ``head.weight`` and no ``fc_norm.*`` (ViT with ``norm`` and a token head)
mae_encoder        any other ViT (``patch_embed.proj.weight``): the encoder-only MAE release
                   ``mae_pretrain_vit_*.pth``, MAE fine-tuned (``fc_norm`` + ``head``), TinyMIM
                   students (``TinyMIM-PT-*.pth``: MAE encoder keys; the last block's head count
                   is not in the keys), our extracted backbones, headless timm ViTs
================== ===========================================================================

All formats share the timm / MAE encoder layout (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*`` / ``fc_norm.*``, ``head.*``), so the
conversions only select prefixes (:func:`select_encoder`: the ``student.`` / ``backbone.`` /
``model.`` part, the other parts reported as dropped) and rename keys.

Loading (:func:`load_pretrained`) is driven by registered *uses* (:func:`register_use`;
:data:`USES` lists them): a use turns the checkpoint into the model's keys plus allow-lists.

=============== ==========================================================================
use             loads
=============== ==========================================================================
mae_teacher     whole MAE teacher (encoder + decoder, required) for G2SD
encoder_teacher plain ViT encoder teacher (D-MAE / TinyMIM / classifier teacher)
backbone        student encoder for fine-tuning / det / seg (new head, fc_norm, rel-pos, BEiT
                bias tables and layer scales may be missing)
mae             whole MaskedAutoencoderViT, exact
distiller       our distiller (``student.*`` + ``projector.*``) or an official GD file
whole           the model's own state dict, exact (after ``student.`` / ``backbone.`` /
                ``module.`` that no model key has)
=============== ==========================================================================

:func:`load_state_dict_strict` verifies missing, unexpected, shape-mismatched and
wrong-dtype-kind keys (integer / bool tensors for floating parameters) against fnmatch
allow-lists, resamples ``pos_embed`` / ``decoder_pos_embed`` to the model's grid and
``rel_pos_h`` / ``rel_pos_w`` to the model's length and BEiT ``relative_position_bias_table``
to the model's grid (geometric-sequence interpolation), raises :class:`CheckpointError` for
anything not allowed, and logs a one-screen summary (also to the current mmengine logger,
so it reaches the train log).

Saving: :func:`atomic_save` is the one atomic write; :func:`save_state_dict` exports plain
state dicts (torch or safetensors).
"""

from g2sd.checkpoint._common import CheckpointError
from g2sd.checkpoint.formats import (
    FORMATS,
    detect_format,
    extract_state_dict,
    official_gd_to_distiller,
    select_encoder,
    select_part,
    strip_prefixes,
    to_encoder_state_dict,
)
from g2sd.checkpoint.loading import (
    USES,
    LoadReport,
    UsePlan,
    load_pretrained,
    load_state_dict_strict,
    prepare_backbone_state_dict,
    register_use,
)
from g2sd.checkpoint.reading import MMEngineStateStub, load_file
from g2sd.checkpoint.saving import atomic_save, save_state_dict

__all__ = [
    'FORMATS',
    'MMEngineStateStub',
    'USES',
    'CheckpointError',
    'LoadReport',
    'UsePlan',
    'atomic_save',
    'detect_format',
    'extract_state_dict',
    'load_file',
    'load_pretrained',
    'load_state_dict_strict',
    'official_gd_to_distiller',
    'prepare_backbone_state_dict',
    'register_use',
    'save_state_dict',
    'select_encoder',
    'select_part',
    'strip_prefixes',
    'to_encoder_state_dict',
]
