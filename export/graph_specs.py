"""One declarative spec per exported graph (docs/package-format.md).

A spec names every input and output with its dtype and dims (an int for a
static dim, a name for a dynamic one), the range each dynamic dim is exported
for, and how to draw a valid random value for each input. The exporter, the
verifier and the manifest all read these specs, so the contract is written
once. Batch is 1 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crosslmm_edge.export.config import CrossLMMConfig

if TYPE_CHECKING:
    import torch

# Roles double as file stems: vision_encoder.onnx, pooling.onnx, llm.onnx.
VISION_ENCODER, POOLING, LLM = "vision_encoder", "pooling", "llm"
ROLES = (VISION_ENCODER, POOLING, LLM)

# How an input is filled with random values (the verifier and export dummies).
FILL_NORMAL, FILL_TOKENS, FILL_POSITIONS = "normal", "tokens", "positions"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``dims`` holds ints (static) and names (dynamic)."""

    name: str
    dtype: str  # numpy-style name: float32, float16, int64
    dims: tuple[int | str, ...]
    fill: str = FILL_NORMAL


@dataclass(frozen=True)
class DimSpec:
    """A dynamic dim: its range, and for a derived dim the expression it equals."""

    name: str
    min: int
    max: int
    expr: str | None = None  # e.g. "frames*4"; None for a free dim


@dataclass(frozen=True)
class GraphSpec:
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: tuple[DimSpec, ...]

    @property
    def file_name(self) -> str:
        return f"{self.role}.onnx"

    def dim(self, name: str) -> DimSpec:
        return next(d for d in self.dims if d.name == name)


@dataclass(frozen=True)
class ExportLimits:
    """The dynamic ranges a package is exported for."""

    max_frames: int
    max_context: int


def default_limits(config: CrossLMMConfig) -> ExportLimits:
    """``num_frames`` frames; a context of the model's positions, capped at 8192."""
    return ExportLimits(config.num_frames, min(config.text_config.max_position_embeddings, 8192))


def vision_encoder_spec(config: CrossLMMConfig, limits: ExportLimits, dtype: str) -> GraphSpec:
    v = config.vision_config
    n = v.num_patches
    return GraphSpec(
        VISION_ENCODER,
        inputs=(TensorSpec("pixel_values", dtype, ("frames", 3, v.image_size, v.image_size)),),
        outputs=(TensorSpec("patch_features", dtype, ("frames", n, v.hidden_size)),),
        dims=(DimSpec("frames", 1, limits.max_frames),),
    )


def cross_names(num_dcal: int) -> list[str]:
    """Per DCAL j, in graph order: v2v_key, v2v_value, t2v_key, t2v_value."""
    parts = ("v2v_key", "v2v_value", "t2v_key", "t2v_value")
    return [f"{part}.{j}" for j in range(num_dcal) for part in parts]


def pooling_spec(config: CrossLMMConfig, limits: ExportLimits, dtype: str) -> GraphSpec:
    v, t = config.vision_config, config.text_config
    n, p = v.num_patches, config.tokens_per_frame
    kv = (t.num_key_value_heads, t.head_dim)
    outputs = [TensorSpec("visual_embeds", dtype, (1, "pooled_tokens", t.hidden_size))]
    outputs += [
        TensorSpec(name, dtype, (1, "memory_tokens", *kv)) for name in cross_names(config.num_dcal)
    ]
    return GraphSpec(
        POOLING,
        inputs=(TensorSpec("patch_features", dtype, ("frames", n, v.hidden_size)),),
        outputs=tuple(outputs),
        dims=(
            DimSpec("frames", 1, limits.max_frames),
            DimSpec("pooled_tokens", p, p * limits.max_frames, f"frames*{p}"),
            DimSpec("memory_tokens", n, n * limits.max_frames, f"frames*{n}"),
        ),
    )


def llm_spec(
    config: CrossLMMConfig, limits: ExportLimits, dtype: str, all_logits: bool = False
) -> GraphSpec:
    """The LLM chunk graph; ``all_logits`` returns every position's logits, not the last."""
    t = config.text_config
    n, p = config.vision_config.num_patches, config.tokens_per_frame
    kv = (t.num_key_value_heads, t.head_dim)
    inputs = [
        TensorSpec("input_ids", "int64", (1, "text_len"), FILL_TOKENS),
        TensorSpec("visual_embeds", dtype, (1, "visual_len", t.hidden_size)),
        TensorSpec("position_ids", "int64", (1, "seq_len"), FILL_POSITIONS),
    ]
    logits_dims = (1, "seq_len", t.vocab_size) if all_logits else (1, t.vocab_size)
    outputs = [TensorSpec("logits", "float32", logits_dims)]
    for i in range(t.num_hidden_layers):
        inputs += [
            TensorSpec(f"past_{kind}.{i}", dtype, (1, "past_len", *kv)) for kind in ("key", "value")
        ]
        outputs += [
            TensorSpec(f"present_{kind}.{i}", dtype, (1, "seq_len", *kv))
            for kind in ("key", "value")
        ]
    for name in cross_names(config.num_dcal):
        length = "v2v_len" if name.startswith("v2v") else "memory_len"
        inputs.append(TensorSpec(name, dtype, (1, length, *kv)))
    max_visual = p * limits.max_frames
    dims = [
        DimSpec("text_len", 0, limits.max_context),
        DimSpec("visual_len", 0, max_visual),
        DimSpec("seq_len", 1, limits.max_context, "text_len+visual_len"),
        DimSpec("past_len", 0, limits.max_context - 1),
        DimSpec(
            "v2v_len",
            0,
            n * limits.max_frames,
            f"visual_len/{p}*{n}" if config.v2v_scope == "frame" else None,
        ),
        DimSpec("memory_len", 0, n * limits.max_frames),
    ]
    return GraphSpec(LLM, tuple(inputs), tuple(outputs), tuple(dims))


def graph_specs(
    config: CrossLMMConfig, limits: ExportLimits, dtype: str = "float32", all_logits: bool = False
) -> dict[str, GraphSpec]:
    """The three graph specs of a package, keyed by role."""
    return {
        VISION_ENCODER: vision_encoder_spec(config, limits, dtype),
        POOLING: pooling_spec(config, limits, dtype),
        LLM: llm_spec(config, limits, dtype, all_logits),
    }


def llm_sizes(
    config: CrossLMMConfig, text_len: int, frames: int, past_len: int, memory_frames: int
) -> dict[str, int]:
    """Concrete LLM dims for a chunk of ``text_len`` tokens and ``frames`` frames.

    ``memory_frames`` frames of memory exist (T2V); V2V sees the chunk's frames
    (``"frame"`` scope) or the whole memory (``"video"``), none without frames.
    """
    n, p = config.vision_config.num_patches, config.tokens_per_frame
    v2v_frames = 0 if frames == 0 else (frames if config.v2v_scope == "frame" else memory_frames)
    return {
        "text_len": text_len,
        "visual_len": frames * p,
        "seq_len": text_len + frames * p,
        "past_len": past_len,
        "v2v_len": v2v_frames * n,
        "memory_len": memory_frames * n,
    }


def random_inputs(
    spec: GraphSpec, sizes: dict[str, int], vocab_size: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random valid inputs for ``spec`` at the dynamic ``sizes`` (name -> value)."""
    import torch

    out = {}
    for tensor in spec.inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in tensor.dims]
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
