"""Export-side companions of the graph contract (runtime/model/contract.py): dummy inputs.

The specs themselves are torch-free data in ``crosslmm_edge.runtime.model.contract``;
here they are filled with torch tensors for tracing and verification.
"""

from __future__ import annotations

import torch

from ..runtime.model.config import CrossLMMConfig
from ..runtime.model.contract import (
    FILL_POSITIONS,
    FILL_TOKENS,
    LLM,
    POOLING,
    VISION_ENCODER,
    GraphSpec,
    llm_sizes,
)


def random_inputs(
    spec: GraphSpec, sizes: dict[str, int], vocab_size: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random valid inputs for ``spec`` at the dynamic ``sizes`` (name -> value)."""
    out = {}
    for tensor in spec.inputs:
        shape = list(tensor.shape(sizes))
        if tensor.fill == FILL_TOKENS:
            out[tensor.name] = torch.randint(0, vocab_size, shape, generator=generator)
        elif tensor.fill == FILL_POSITIONS:
            start = sizes.get("past_len", 0)
            out[tensor.name] = torch.arange(start, start + shape[1]).reshape(shape)
        else:
            dtype = getattr(torch, tensor.dtype)
            out[tensor.name] = torch.randn(shape, generator=generator).to(dtype)
    return out


def trace_sizes(config: CrossLMMConfig) -> dict[str, dict[str, int]]:
    """Per role, the dims the exporter traces with: distinct values ≥ 2.

    torch.export specialises dims of size 0 or 1, and the V2V memory length
    must differ from the T2V one so the two stay separate symbols.
    """
    llm = llm_sizes(config, text_len=3, frames=2, past_len=7, memory_frames=5)
    if config.v2v_scope == "video":
        llm["v2v_len"] = 6 * config.vision_config.num_patches
    return {VISION_ENCODER: {"frames": 2}, POOLING: {"frames": 2}, LLM: llm}
