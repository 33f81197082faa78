"""The CrossLMM reference model (spec sections 1–3).

Module names equal checkpoint keys: ``vision_model.*``, ``projector.*``,
``language_model.*`` and ``dcal.{j}.*``.

The LLM step works on one *chunk* laid out as ``[S text tokens ; Nv visual
embeddings]`` (either part may be empty). The video prefix is one such chunk
(system and user header, then the visual span); a question, a later turn or a
decode step is a text-only chunk; frames appended to a live stream are a
visual-only chunk. Which positions are visual is thus fixed by the input
shapes alone, which keeps the exported graph free of data-dependent slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..runtime.model.config import CrossLMMConfig
from .attention import full_attention
from .dcal import DCAL, Attend, CrossKV
from .projector import Projector, pool_tokens
from .qwen2 import Qwen2ForCausalLM, rotary_cos_sin
from .siglip import SiglipVisionTransformer

KV = tuple[Tensor, Tensor]


@dataclass
class VideoFeatures:
    """What the LLM needs of a video: computed once, reused by every question.

    visual_embeds: [1, T·P, D] pooled, projected tokens (enter the sequence).
    cross: per DCAL, the memory's K/V, each [1, T·N, kvh, hd].
    """

    visual_embeds: Tensor
    cross: list[CrossKV]


class CrossLMM(nn.Module):
    def __init__(self, config: CrossLMMConfig, cross_attention: Attend = full_attention) -> None:
        super().__init__()
        self.config = config
        v, t = config.vision_config, config.text_config
        self.vision_model = SiglipVisionTransformer(v, config.vision_feature_layer)
        self.projector = Projector(v.hidden_size, t.hidden_size)
        self.language_model = Qwen2ForCausalLM(t)
        self.dcal = nn.ModuleList(DCAL(config, cross_attention) for _ in range(config.num_dcal))

    # -- video side -------------------------------------------------------
    def encode_frames(self, pixels: Tensor) -> Tensor:
        """pixels [F, 3, H, W] -> patch features [F, N, Dv]."""
        return self.vision_model(pixels)

    def pool_and_project(self, features: Tensor) -> VideoFeatures:
        """Patch features of F frames -> their visual embeddings and cross K/V.

        Frame-local, so chunks of frames can be processed separately and
        concatenated along the token axis.
        """
        pooled = pool_tokens(features, self.config.pooled_grid, self.config.pool_mode)
        embeds = self.projector(pooled).reshape(1, -1, self.config.text_config.hidden_size)
        memory = self.projector(features).reshape(1, -1, self.config.text_config.hidden_size)
        return VideoFeatures(embeds, [layer.project_memory(memory) for layer in self.dcal])

    def encode_video(self, pixels: Tensor) -> VideoFeatures:
        """Frames [T, 3, H, W] -> ``VideoFeatures``."""
        return self.pool_and_project(self.encode_frames(pixels))

    # -- language side ----------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        visual_embeds: Tensor,
        position_ids: Tensor,
        past: list[KV],
        cross: list[CrossKV],
        last_only: bool = False,
    ) -> tuple[Tensor, list[KV]]:
        """Run one chunk ``[text ; visual]`` through the LLM.

        input_ids: [B, S]; visual_embeds: [B, Nv, D]; position_ids: [B, S+Nv];
        past: per layer (k, v), each [B, P, kvh, hd]; cross: per DCAL.
        Returns logits [B, S+Nv, V] (``last_only``: [B, 1, V], which spares a
        prefill the head's matmul over every position) and the chunk's new
        cache entries per layer, each [B, S+Nv, kvh, hd].
        """
        lm = self.language_model
        text_len = input_ids.shape[1]
        h = torch.cat([lm.model.embed_tokens(input_ids), visual_embeds], dim=1)  # [B, L, D]
        cos, sin = rotary_cos_sin(position_ids, lm.config.head_dim, lm.config.rope_theta)
        new_kv: list[KV] = []
        for i, layer in enumerate(lm.model.layers):
            h, k, v = layer(h, cos, sin, *past[i])
            new_kv.append((k, v))
            j = self.config.dcal_after_layer(i)
            if j is not None:
                text, visual = self.dcal[j](h[:, :text_len], h[:, text_len:], cross[j])
                h = torch.cat([text, visual], dim=1)
        if last_only:
            h = h[:, -1:]
        logits = nn.functional.linear(lm.model.norm(h), lm.head_weight())
        return logits, new_kv

    def empty_past(self, batch: int = 1) -> list[KV]:
        """A zero-length cache for every layer."""
        t = self.config.text_config
        ref = self.language_model.model.embed_tokens.weight
        empty = ref.new_zeros(batch, 0, t.num_key_value_heads, t.head_dim)
        return [(empty, empty) for _ in range(t.num_hidden_layers)]


def build_model(config: CrossLMMConfig, cross_attention: Attend = full_attention) -> CrossLMM:
    """A CrossLMM with random weights (DCAL gates at 0), in eval mode.

    ``cross_attention``: the DCAL attention kernel; ``full_attention`` exports,
    ``sdpa_attention`` runs the same math in torch's fused kernels.
    """
    return CrossLMM(config, cross_attention).eval()
