"""Thin wrappers of the reference model with flat tensor inputs and outputs.

Each wrapper calls ``CrossLMM``'s own modules, so the exported graphs and the
reference share one implementation; the wrappers only flatten lists of
tensors into the positional order of the graph specs (graph_specs.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..runtime.model.contract import LLM, POOLING, VISION_ENCODER
from .dcal import CrossKV
from .model import CrossLMM
from .projector import pooling_matrix


class VisionEncoderGraph(nn.Module):
    """pixel_values [F, 3, H, W] -> patch_features [F, N, Dv]."""

    def __init__(self, model: CrossLMM) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_frames(pixel_values)


class PoolingGraph(nn.Module):
    """patch_features [F, N, Dv] -> visual_embeds and every DCAL's cross K/V.

    The pooling runs as a MatMul with ``pooling_matrix`` (the exact linear map
    of ``pool_tokens``), so the graph has no Resize/AdaptiveAvgPool whose
    rounding differs between backends.
    """

    def __init__(self, model: CrossLMM) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        matrix = pooling_matrix(cfg.vision_config.num_patches, cfg.pooled_grid, cfg.pool_mode)
        dtype = model.projector.linear_1.weight.dtype
        self.register_buffer("pool", matrix.to(dtype), persistent=False)  # [P, N]

    def forward(self, patch_features: Tensor) -> tuple[Tensor, ...]:
        dim = self.model.config.text_config.hidden_size
        pooled_count = self.pool.shape[0]
        pooled = torch.matmul(self.pool, patch_features)  # [F, P, Dv]
        # One projector call on [pooled ; original] tokens, so the graph holds Φ's weights once.
        projected = self.model.projector(torch.cat([pooled, patch_features], dim=1))  # [F, P+N, D]
        embeds = projected[:, :pooled_count].reshape(1, -1, dim)  # [1, F·P, D]
        memory = projected[:, pooled_count:].reshape(1, -1, dim)  # [1, F·N, D]
        outputs = [embeds]
        for layer in self.model.dcal:
            cross = layer.project_memory(memory)
            outputs += [cross.v2v_key, cross.v2v_value, cross.t2v_key, cross.t2v_value]
        return tuple(outputs)


class LLMGraph(nn.Module):
    """One ``[text ; visual]`` chunk: logits and the new KV entries.

    Logits are the last position's [1, V], or with ``all_logits`` every
    position's [1, L, V] (for scoring a whole chunk).

    Positional inputs after ``position_ids``: ``past_key.i, past_value.i`` for
    every layer, then ``v2v_key.j, v2v_value.j, t2v_key.j, t2v_value.j`` for
    every DCAL.
    """

    def __init__(self, model: CrossLMM, all_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.num_layers = model.config.text_config.num_hidden_layers
        self.all_logits = all_logits

    def forward(
        self, input_ids: Tensor, visual_embeds: Tensor, position_ids: Tensor, *caches: Tensor
    ) -> tuple[Tensor, ...]:
        split = 2 * self.num_layers
        past = [(caches[i], caches[i + 1]) for i in range(0, split, 2)]
        cross = [CrossKV(*caches[j : j + 4]) for j in range(split, len(caches), 4)]
        logits, new_kv = self.model(
            input_ids, visual_embeds, position_ids, past, cross, last_only=not self.all_logits
        )
        outputs = [logits.float() if self.all_logits else logits[:, -1].float()]  # [1, (L,) V]
        for key, value in new_kv:
            outputs += [key, value]
        return tuple(outputs)


def graph_module(role: str, model: CrossLMM, all_logits: bool = False) -> nn.Module:
    """The wrapper exporting graph ``role`` of ``model`` (in eval mode)."""
    if role == LLM:
        return LLMGraph(model, all_logits).eval()
    wrappers = {VISION_ENCODER: VisionEncoderGraph, POOLING: PoolingGraph}
    return wrappers[role](model).eval()
