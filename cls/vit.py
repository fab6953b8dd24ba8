"""Vision Transformer with a DeiT-style distillation token (G2SD classification SD).

Specific distillation for classification in G2SD (Huang et al., "Generic-to-Specific
Distillation of Masked Autoencoders", CVPR 2023, arXiv 2302.14771) follows DeiT (Touvron et
al., "Training data-efficient image transformers & distillation through attention", ICML
2021): the student gets a second learned token and a second linear head trained against
the teacher, and inference averages the class-token and distillation-token heads.

Two placements of the distillation token (``dist_token_position``):

``'end'`` (default; the official G2SD ``models_vit.py``)
    appended after the patch tokens, *after* the position embedding was added, so it
    carries no position embedding. Token order ``[cls, patches..., dist]``.
``'deit'`` (DeiT)
    at index 1 with its own learned position embedding. Token order
    ``[cls, dist, patches...]``. The dist token's position embedding is the separate
    parameter ``dist_pos_embed`` (1, 1, C), so ``pos_embed`` keeps the (1, 1 + N, C) shape
    of every MAE / GD / timm checkpoint and is resampled by the same loader. DeiT stores
    the same numbers as row 1 of a (1, 2 + N, C) ``pos_embed``.

State-dict keys are those of :class:`g2sd.models.VisionTransformer` plus ``dist_token``,
``head_dist.{weight,bias}`` (and ``dist_pos_embed`` for ``'deit'``), as in timm's
``VisionTransformerDistilled``. ``num_prefix_tokens`` stays 1: it counts the prefix rows of
``pos_embed``, which is what the checkpoint loader resamples around.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from g2sd.models.vit import VisionTransformer
from g2sd.registry import MODELS

__all__ = ['DIST_KEYS', 'DistilledVisionTransformer']

#: fnmatch patterns of the parameters a plain ViT checkpoint lacks (allow them as missing
#: when initialising a distillation student from a GD / MAE checkpoint).
DIST_KEYS = ('dist_token', 'dist_pos_embed', 'head_dist.*')


@MODELS.register_module()
class DistilledVisionTransformer(VisionTransformer):
    """ViT with a class token, a distillation token and two heads.

    Training mode returns ``(head(cls), head_dist(dist))``, each (B, num_classes); eval mode
    returns their average (``eval_output='avg'``, the paper), or one of them.

    Args:
        dist_token_position: ``'end'`` (official G2SD: last token, no position embedding)
            or ``'deit'`` (index 1, own position embedding). Defaults to ``'end'``.
        eval_output: What eval mode returns: ``'avg'`` ((cls + dist) / 2), ``'cls'`` or
            ``'dist'``. Defaults to ``'avg'``.
        *args: Passed to :class:`g2sd.models.VisionTransformer`.
        **kwargs: Passed to :class:`g2sd.models.VisionTransformer`; ``global_pool`` must
            be ``'token'`` (pooling over patches is not defined with a distillation token,
            as in the official code).

    Shapes:
        ``forward_features``: (B, C_in, H, W) -> (B, 2 + N, C).
        ``forward``: (B, C_in, H, W) -> ((B, K), (B, K)) in training, (B, K) in eval.
    """

    def __init__(
        self,
        *args: Any,
        dist_token_position: Literal['end', 'deit'] = 'end',
        eval_output: Literal['avg', 'cls', 'dist'] = 'avg',
        **kwargs: Any,
    ) -> None:
        if dist_token_position not in ('end', 'deit'):
            raise ValueError(
                f"dist_token_position must be 'end' or 'deit', got {dist_token_position!r}"
            )
        if eval_output not in ('avg', 'cls', 'dist'):
            raise ValueError(f"eval_output must be 'avg', 'cls' or 'dist', got {eval_output!r}")
        if kwargs.get('global_pool', 'token') != 'token' or kwargs.get('class_token') is False:
            raise ValueError(
                "a distillation-token ViT needs global_pool='token' and a class token, got "
                f'global_pool={kwargs.get("global_pool")!r}, class_token='
                f'{kwargs.get("class_token", True)!r}'
            )
        super().__init__(*args, **kwargs)
        self.dist_token_position = dist_token_position
        self.eval_output = eval_output
        self.dist_index = 1 if dist_token_position == 'deit' else -1
        if dist_token_position == 'deit':
            self.num_lead_tokens = 2
        else:
            self.num_trail_tokens = 1
        c = self.embed_dim
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c))
        self.dist_pos_embed = (
            nn.Parameter(torch.zeros(1, 1, c)) if dist_token_position == 'deit' else None
        )
        self.head_dist = nn.Linear(c, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self._init_dist()

    # ------------------------------------------------------------------ init
    def _init_dist(self) -> None:
        """Official G2SD / DeiT init: trunc-normal(0.02) token, head and position."""
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.dist_pos_embed is not None:
            nn.init.trunc_normal_(self.dist_pos_embed, std=0.02)
        if isinstance(self.head_dist, nn.Linear):
            nn.init.trunc_normal_(self.head_dist.weight, std=0.02)
            nn.init.zeros_(self.head_dist.bias)

    def init_weights(self) -> None:
        """MAE init of the ViT, then the distillation token, its position and head."""
        super().init_weights()
        if 'dist_token' in self._parameters:  # not yet during VisionTransformer.__init__
            self._init_dist()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """``pos_embed``, ``cls_token``, ``dist_token`` (and ``dist_pos_embed``)."""
        names = super().no_weight_decay() | {'dist_token'}
        if self.dist_pos_embed is not None:
            names.add('dist_pos_embed')
        return names

    def get_layer_depth(self, name: str, num_layers: int | None = None) -> tuple[int, int]:
        """Layer id for layer-wise lr decay.

        As the ViT (``cls_token`` / ``pos_embed`` / ``patch_embed`` -> 0, ``blocks.k`` ->
        k + 1, norm and heads -> top) with ``dist_pos_embed`` -> 0 (a position embedding)
        and ``dist_token`` / ``head_dist`` -> top (MAE's ``param_groups_lrd`` gives every
        name it does not know the top id, which is what the official G2SD run used).

        Args:
            name: Parameter name relative to this module.
            num_layers: Total layer ids; defaults to ``depth + 2``.

        Returns:
            (layer_id, num_layers).
        """
        num_layers = self.depth + 2 if num_layers is None else num_layers
        if name == 'dist_pos_embed':
            return 0, num_layers
        if name == 'dist_token':
            return num_layers - 1, num_layers
        return super().get_layer_depth(name, num_layers)

    # --------------------------------------------------------------- forward
    def _cat_extra_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Position-embedded patch tokens (B, N, C) -> (B, 2 + N, C) with the distillation token.

        The ViT's one token-preparation override point: ``[cls, patches..., dist]``
        (``'end'``, no position on ``dist``) or ``[cls, dist + dist_pos_embed, patches...]``
        (``'deit'``). Every forward path of :class:`g2sd.models.VisionTransformer` uses it.
        """
        b = x.shape[0]
        cls = self.prefix_tokens(b)
        dist = self.dist_token.expand(b, -1, -1)
        if self.dist_pos_embed is not None:  # 'deit'
            return torch.cat([cls, dist + self.dist_pos_embed, x], dim=1)
        return torch.cat([cls, x, dist], dim=1)  # 'end': no position embedding

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Heads on the class and distillation tokens of (B, 2 + N, C).

        Args:
            x: Normed tokens from :meth:`forward_features`.
            pre_logits: Return the two token features ((B, C), (B, C)) instead of logits.

        Returns:
            Training: ``(cls_logits, dist_logits)``. Eval: per ``eval_output``.
        """
        x_cls = self.fc_norm(x[:, 0])
        x_dist = self.fc_norm(x[:, self.dist_index])
        if pre_logits:
            return x_cls, x_dist
        logits, dist = self.head(x_cls), self.head_dist(x_dist)
        if self.training:
            return logits, dist
        if self.eval_output == 'cls':
            return logits
        if self.eval_output == 'dist':
            return dist
        return (logits + dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> ``(cls_logits, dist_logits)`` (train) or logits (eval)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace both heads (timm API); ``global_pool`` must stay ``'token'``."""
        if global_pool not in (None, 'token'):
            raise ValueError(
                f"a distillation-token ViT needs global_pool='token', got {global_pool!r}"
            )
        super().reset_classifier(num_classes)
        self.head_dist = (
            nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        )
        self._init_dist()
