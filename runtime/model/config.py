"""Config dataclasses read from a CrossLMM ``config.json``.

Field names are Hugging Face's (``SiglipVisionConfig``, ``Qwen2Config``) so a
real checkpoint's sub-configs load verbatim; unknown keys are kept and written
back unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .limits import (
    MAX_TOKEN_ID,
    is_count,
    positive_float_problems,
    size_problems,
)

POOL_MODES = ("bilinear", "avg")
# Hugging Face activation names the SigLIP tower implements (siglip.activation).
VISION_ACTIVATIONS = frozenset({"gelu_pytorch_tanh", "gelu_fast", "gelu_new", "gelu", "silu"})
V2V_SCOPES = ("video", "frame")


def _split_known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


def _to_dict(obj: Any) -> dict[str, Any]:
    out = dict(obj.extra)
    for f in dataclasses.fields(obj):
        if f.name != "extra":
            value = getattr(obj, f.name)
            out[f.name] = _to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


@dataclass
class VisionConfig:
    """SigLIP vision tower (keys of ``transformers.SiglipVisionConfig``)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def grid_size(self) -> int:
        """Patches per side (27 for 384 px / patch 14)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame, N."""
        return self.grid_size**2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionConfig:
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass
class TextConfig:
    """Qwen2 / Qwen2.5 decoder (keys of ``transformers.Qwen2Config``)."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def unsupported_features(self) -> list[str]:
        """Qwen2 options the reference decoder does not implement (plain RoPE, full attention)."""
        rope = self.extra.get("rope_parameters") or self.extra.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            return [f"rope parameters {rope!r} (expected an object)"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        problems = [] if rope_type == "default" else [f"rope type {rope_type!r} (only 'default')"]
        if self.extra.get("use_sliding_window"):
            problems.append("sliding-window attention")
        return problems

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfig:
        data = dict(data)
        # transformers >= 5 nests rope_theta in rope_parameters.
        rope = data.get("rope_parameters") or {}
        if "rope_theta" not in data and isinstance(rope, dict) and "rope_theta" in rope:
            data["rope_theta"] = rope["rope_theta"]
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass
class CrossLMMConfig:
    """The whole model: vision tower, pooling, projector, Qwen2 LLM and DCAL."""

    vision_config: VisionConfig = field(default_factory=VisionConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    pooled_grid: int = 3
    pool_mode: str = "bilinear"
    dcal_every: int = 4
    v2v_scope: str = "video"
    dcal_mlp: bool = False
    vision_feature_layer: int = -1
    video_token_id: int = 151656
    num_frames: int = 32
    model_type: str = "crosslmm"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tokens_per_frame(self) -> int:
        """Pooled tokens per frame that enter the LLM sequence, P = g²."""
        return self.pooled_grid**2

    @property
    def num_dcal(self) -> int:
        return self.text_config.num_hidden_layers // self.dcal_every

    def dcal_after_layer(self, layer: int) -> int | None:
        """Index j of the DCAL placed right after decoder layer ``layer``, if any."""
        if (layer + 1) % self.dcal_every == 0:
            return (layer + 1) // self.dcal_every - 1
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrossLMMConfig:
        known, extra = _split_known(cls, data)
        for key in ("vision_config", "text_config"):
            if not isinstance(known.get(key, {}), dict):
                raise UserError(f"invalid CrossLMM config: {key} must be an object")
        known["vision_config"] = VisionConfig.from_dict(known.get("vision_config", {}))
        known["text_config"] = TextConfig.from_dict(known.get("text_config", {}))
        config = cls(**known, extra=extra)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def validate(self) -> None:
        """Raise ``UserError`` when the config describes no model this project runs."""
        # Sizes first: the structural checks divide by them, and every later
        # allocation multiplies them. Then the floats that enter the arithmetic.
        problems = self._size_problems() + self._type_problems()
        if not problems:
            problems = self._structure_problems()
        if problems:
            raise UserError("invalid CrossLMM config: " + "; ".join(problems))

    def _size_problems(self) -> list[str]:
        v, t = self.vision_config, self.text_config
        sizes = {
            "vision hidden_size": v.hidden_size,
            "vision intermediate_size": v.intermediate_size,
            "vision num_hidden_layers": v.num_hidden_layers,
            "vision num_attention_heads": v.num_attention_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "vocab_size": t.vocab_size,
            "text hidden_size": t.hidden_size,
            "text intermediate_size": t.intermediate_size,
            "text num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "pooled_grid": self.pooled_grid,
            "dcal_every": self.dcal_every,
            "num_frames": self.num_frames,
        }
        return size_problems(sizes)

    def _type_problems(self) -> list[str]:
        """Floats finite and positive, ids integers, names strings (a NaN answers nothing)."""
        v, t = self.vision_config, self.text_config
        problems = positive_float_problems(
            {
                "vision layer_norm_eps": v.layer_norm_eps,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
            }
        )
        ids = {"video_token_id": self.video_token_id, "bos_token_id": t.bos_token_id}
        eos = t.eos_token_id if isinstance(t.eos_token_id, list) else [t.eos_token_id]
        ids.update({f"eos_token_id[{i}]": value for i, value in enumerate(eos)})
        problems += [
            f"{name} must be an integer token id, got {value!r}"
            for name, value in ids.items()
            if (value is not None or name == "video_token_id")
            and not is_count(value, 0, MAX_TOKEN_ID)
        ]
        if not isinstance(self.vision_feature_layer, int) or isinstance(
            self.vision_feature_layer, bool
        ):
            problems.append(
                f"vision_feature_layer must be an integer, not {self.vision_feature_layer!r}"
            )
        names = {
            "model_type": self.model_type,
            "pool_mode": self.pool_mode,
            "v2v_scope": self.v2v_scope,
            "vision hidden_act": v.hidden_act,
            "text hidden_act": t.hidden_act,
        }
        problems += [
            f"{n} must be a string, not {x!r}" for n, x in names.items() if not isinstance(x, str)
        ]
        flags = {"dcal_mlp": self.dcal_mlp, "tie_word_embeddings": t.tie_word_embeddings}
        problems += [
            f"{n} must be true or false, not {x!r}"
            for n, x in flags.items()
            if not isinstance(x, bool)
        ]
        return problems

    def _structure_problems(self) -> list[str]:
        v, t = self.vision_config, self.text_config
        problems = []
        if self.model_type != "crosslmm":
            problems.append(f"model_type is {self.model_type!r}, expected 'crosslmm'")
        if self.pool_mode not in POOL_MODES:
            problems.append(f"pool_mode {self.pool_mode!r} not in {POOL_MODES}")
        if self.v2v_scope not in V2V_SCOPES:
            problems.append(f"v2v_scope {self.v2v_scope!r} not in {V2V_SCOPES}")
        if v.num_channels != 3:
            problems.append(f"vision num_channels {v.num_channels}: the graphs take RGB frames (3)")
        if self.pooled_grid > v.grid_size:
            problems.append(f"pooled_grid {self.pooled_grid} larger than the {v.grid_size}² grid")
        if self.num_dcal < 1:
            problems.append(
                f"dcal_every {self.dcal_every} places no DCAL in {t.num_hidden_layers} layers"
            )
        layer, depth = self.vision_feature_layer, v.num_hidden_layers
        if not (layer == -1 or -depth - 1 <= layer <= depth):
            problems.append(f"vision_feature_layer {layer} outside the {depth}-layer tower")
        if v.hidden_act not in VISION_ACTIVATIONS:
            supported = sorted(VISION_ACTIVATIONS)
            problems.append(f"vision hidden_act {v.hidden_act!r} not in {supported}")
        if t.hidden_act != "silu":
            problems.append(f"text hidden_act {t.hidden_act!r}: Qwen2 uses 'silu'")
        problems += [f"unsupported {feature}" for feature in t.unsupported_features()]
        if v.hidden_size % v.num_attention_heads:
            problems.append("vision hidden_size not divisible by num_attention_heads")
        if t.hidden_size % t.num_attention_heads:
            problems.append("text hidden_size not divisible by num_attention_heads")
        if t.num_attention_heads % t.num_key_value_heads:
            problems.append("num_attention_heads not divisible by num_key_value_heads")
        if not 0 <= self.video_token_id < t.vocab_size:
            problems.append(f"video_token_id {self.video_token_id} outside the vocabulary")
        return problems
