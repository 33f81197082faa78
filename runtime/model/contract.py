"""The graph contract between export and runtime, written once (torch-free).

Role names, tensor names, the one tensor descriptor, the dynamic dims and the
sizes derived from a CrossLMM config. The exporter builds its graphs from
these specs, the manifest records them, the runtime and the engine builder
read them back, so a name or a shape is decided here and nowhere else.
Batch is 1 everywhere (docs/package-format.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import CrossLMMConfig

# Roles double as file stems: vision_encoder.onnx, pooling.onnx, llm.onnx.
VISION_ENCODER, POOLING, LLM = "vision_encoder", "pooling", "llm"
ROLES = (VISION_ENCODER, POOLING, LLM)

# How an input is filled with random values (verify, export dummies, calibration).
FILL_NORMAL, FILL_TOKENS, FILL_POSITIONS = "normal", "tokens", "positions"

CROSS_PARTS = ("v2v_key", "v2v_value", "t2v_key", "t2v_value")
# A shared-cache LLM graph (ONNX Runtime's GroupQueryAttention) also reads these:
# the index of the chunk's last position, and the positions valid after the chunk.
SEQLENS_INPUT, TOTAL_LENGTH_INPUT = "seqlens_k", "total_sequence_length"
POSITIONS_INPUT = "position_ids"  # the LLM chunk's RoPE positions [1, L] int64


def past_names(layer: int) -> tuple[str, str]:
    """The LLM inputs holding layer ``layer``'s cached keys and values."""
    return f"past_key.{layer}", f"past_value.{layer}"


def present_names(layer: int) -> tuple[str, str]:
    """The LLM outputs holding a chunk's new keys and values of layer ``layer``."""
    return f"present_key.{layer}", f"present_value.{layer}"


def cross_names(num_dcal: int) -> list[str]:
    """Per DCAL j, in graph order: v2v_key, v2v_value, t2v_key, t2v_value."""
    return [f"{part}.{j}" for j in range(num_dcal) for part in CROSS_PARTS]


def is_v2v(name: str) -> bool:
    """Whether a cross K/V name is V2V memory (read by visual tokens only)."""
    return name.startswith("v2v_")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``dims`` holds ints (static) and names (dynamic).

    ``dtype`` is a numpy-style name: float32, float16, int64, int8.
    """

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    fill: str = FILL_NORMAL

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["dims"]))

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The concrete shape at the dynamic ``sizes`` (name -> value)."""
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)


@dataclass(frozen=True)
class DimSpec:
    """A dynamic dim: its range, and for a derived dim the expression it equals."""

    name: str
    min: int
    max: int
    expr: str | None = None  # e.g. "frames*4"; None for a free dim


@dataclass(frozen=True)
class GraphSpec:
    """One graph's inputs, outputs and dynamic dims."""

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: tuple[DimSpec, ...]

    def dim(self, name: str) -> DimSpec:
        return next(d for d in self.dims if d.name == name)


@dataclass(frozen=True)
class ExportLimits:
    """The dynamic ranges a package is exported for."""

    max_frames: int
    max_context: int


@dataclass(frozen=True)
class ModelDims:
    """The sizes the runtime needs, all taken from ``CrossLMMConfig`` (never re-derived)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_dcal: int
    tokens_per_frame: int  # P
    patches_per_frame: int  # N
    image_size: int
    num_frames: int
    video_token_id: int
    v2v_scope: str

    @classmethod
    def from_config(cls, config: CrossLMMConfig) -> ModelDims:
        t, v = config.text_config, config.vision_config
        return cls(
            num_layers=t.num_hidden_layers,
            num_heads=t.num_attention_heads,
            num_kv_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            hidden_size=t.hidden_size,
            vocab_size=t.vocab_size,
            num_dcal=config.num_dcal,
            tokens_per_frame=config.tokens_per_frame,
            patches_per_frame=v.num_patches,
            image_size=v.image_size,
            num_frames=config.num_frames,
            video_token_id=config.video_token_id,
            v2v_scope=config.v2v_scope,
        )


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
    config: CrossLMMConfig,
    limits: ExportLimits,
    dtype: str,
    all_logits: bool = False,
    shared_kv: bool = False,
    kv_dtype: str | None = None,
) -> GraphSpec:
    """The LLM chunk graph; ``all_logits`` returns every position's logits, not the last.

    ``kv_dtype``: the self-attention cache's element type where it differs from
    ``dtype`` (``onnx/int4`` may keep a float16 cache beside float32 activations).

    ``shared_kv``: the graph takes the whole head-major cache ``[1, kvh,
    cache_len, hd]`` as ``past_*``, writes the chunk into it in place and
    returns the same buffer as ``present_*`` (ONNX Runtime's
    GroupQueryAttention); the sequence-major default reads ``past_len``
    valid positions and returns only the chunk's ``seq_len`` new ones.
    """
    t = config.text_config
    n, p = config.vision_config.num_patches, config.tokens_per_frame
    kv = (t.num_key_value_heads, t.head_dim)
    inputs = [
        TensorSpec("input_ids", "int64", (1, "text_len"), FILL_TOKENS),
        TensorSpec("visual_embeds", dtype, (1, "visual_len", t.hidden_size)),
        TensorSpec(POSITIONS_INPUT, "int64", (1, "seq_len"), FILL_POSITIONS),
    ]
    logits_dims = (1, "seq_len", t.vocab_size) if all_logits else (1, t.vocab_size)
    outputs = [TensorSpec("logits", "float32", logits_dims)]
    past_dims = (1, kv[0], "cache_len", kv[1]) if shared_kv else (1, "past_len", *kv)
    present_dims = past_dims if shared_kv else (1, "seq_len", *kv)
    cache = kv_dtype or dtype
    for i in range(t.num_hidden_layers):
        inputs += [TensorSpec(name, cache, past_dims) for name in past_names(i)]
        outputs += [TensorSpec(name, cache, present_dims) for name in present_names(i)]
    for name in cross_names(config.num_dcal):
        inputs.append(
            TensorSpec(name, dtype, (1, "v2v_len" if is_v2v(name) else "memory_len", *kv))
        )
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
    if shared_kv:
        inputs += [
            TensorSpec(SEQLENS_INPUT, "int32", (1,)),
            TensorSpec(TOTAL_LENGTH_INPUT, "int32", ()),
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
