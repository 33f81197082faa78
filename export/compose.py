"""Compose a CrossLMM checkpoint from a SigLIP and a Qwen2 checkpoint (spec section 4).

The two towers keep their weights verbatim under the prefixes ``vision_model.``
and ``language_model.``; the projector and the DCAL layers are freshly
initialised from a seed, with their gates at 0, so the composed model's LLM
is exactly the source LLM until it is trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.errors import UserError
from ..runtime.model.config import CrossLMMConfig, TextConfig, VisionConfig
from ..runtime.package.files import read_json
from .checkpoint import model_from_state_dict, read_weights, save_checkpoint
from .dcal import DCAL
from .projector import Projector

VIDEO_TOKEN = "<|video_pad|>"
HF_BOOKKEEPING = ("architectures", "transformers_version", "_name_or_path")
VISION_TYPES = ("siglip_vision_model", "siglip")
TEXT_TYPES = ("qwen2",)


@dataclass
class ComposeOptions:
    """The CrossLMM-specific choices that neither source checkpoint holds."""

    pooled_grid: int = 3
    pool_mode: str = "bilinear"
    dcal_every: int = 4
    v2v_scope: str = "video"
    dcal_mlp: bool = False
    vision_feature_layer: int = -1
    num_frames: int = 32
    seed: int = 0


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in HF_BOOKKEEPING}


def vision_config_of(folder: Path) -> dict[str, Any]:
    """The SigLIP vision config of a SiglipVisionModel or a full SiglipModel folder."""
    path = folder / "config.json"
    data = read_json(path)
    kind = data.get("model_type")
    if kind not in VISION_TYPES:
        raise UserError(f"{path}: model_type {kind!r} is not a SigLIP vision checkpoint")
    if kind == "siglip":
        data = data.get("vision_config") or {}
    return _clean(data)


def text_config_of(folder: Path) -> dict[str, Any]:
    """The Qwen2 config of an LLM folder."""
    path = folder / "config.json"
    data = read_json(path)
    if data.get("model_type") not in TEXT_TYPES:
        raise UserError(f"{path}: model_type {data.get('model_type')!r} is not Qwen2/Qwen2.5")
    return _clean(data)  # features the decoder lacks are refused by config.validate()


def vision_weights(folder: Path) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """``vision_model.*`` tensors of a SigLIP folder.

    transformers < 5 saves SiglipVisionModel keys with the ``vision_model.``
    prefix, transformers >= 5 without it; a full SiglipModel also holds
    ``text_model.*`` and logit scales, which are dropped.
    """
    state, origin = read_weights(folder)
    prefixed = any(k.startswith("vision_model.") for k in state)
    out, where = {}, {}
    for key, tensor in state.items():
        if prefixed and not key.startswith("vision_model."):
            continue
        name = key if prefixed else "vision_model." + key
        out[name], where[name] = tensor, origin[key]
    return out, where


def llm_weights(folder: Path) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """``language_model.*`` tensors of a Qwen2ForCausalLM folder."""
    state, origin = read_weights(folder)
    names = {key: "language_model." + key for key in state}
    return ({names[k]: v for k, v in state.items()}, {names[k]: origin[k] for k in state})


def fresh_bridge_weights(
    config: CrossLMMConfig, seed: int, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Seeded initial projector and DCAL weights (gates 0: DCAL starts as the identity)."""
    t = config.text_config
    with torch.random.fork_rng():  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        bridge = nn.ModuleDict(
            {
                "projector": Projector(config.vision_config.hidden_size, t.hidden_size),
                "dcal": nn.ModuleList(DCAL(config) for _ in range(config.num_dcal)),
            }
        )
    return {k: v.to(dtype) for k, v in bridge.state_dict().items()}


def add_video_token(tokenizer_json: Path, tokenizer_config: Path) -> tuple[int, dict[str, str]]:
    """The id of ``<|video_pad|>``, adding it as a special token if missing.

    Returns the id and the rewritten tokenizer files (name -> text; empty when
    the tokenizer already had the token).
    """
    from tokenizers import AddedToken, Tokenizer

    if not tokenizer_json.is_file():
        raise UserError(f"{tokenizer_json}: file not found (the LLM folder needs tokenizer.json)")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise UserError(f"{tokenizer_json}: unreadable tokenizer ({exc})") from None
    token_id = tokenizer.token_to_id(VIDEO_TOKEN)
    if token_id is not None:
        return token_id, {}
    tokenizer.add_special_tokens([AddedToken(VIDEO_TOKEN, special=True, normalized=False)])
    token_id = tokenizer.token_to_id(VIDEO_TOKEN)
    files = {"tokenizer.json": tokenizer.to_str(pretty=True)}
    if tokenizer_config.is_file():
        data = read_json(tokenizer_config)
        data.setdefault("added_tokens_decoder", {})[str(token_id)] = {
            "content": VIDEO_TOKEN,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        files["tokenizer_config.json"] = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return token_id, files


def cover_token(state: dict[str, Tensor], text: TextConfig, token_id: int) -> None:
    """Grow the embedding (and an untied head) so that ``token_id`` is in range.

    The placeholder's row is never read as input (visual embeddings replace
    it) and its logit is masked, but every id the tokenizer can emit must index
    the tables; the mean embedding keeps the new row ordinary.
    """
    if token_id < text.vocab_size:
        return
    extra = token_id + 1 - text.vocab_size
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        if key in state:
            table = state[key]  # [V, D]
            state[key] = torch.cat([table, table.mean(0, keepdim=True).expand(extra, -1)])
    text.vocab_size = token_id + 1


def compose(
    vision_dir: str | Path,
    llm_dir: str | Path,
    out_dir: str | Path,
    options: ComposeOptions | None = None,
    force: bool = False,
) -> Path:
    """Build and save a CrossLMM checkpoint; returns ``out_dir``."""
    options = options or ComposeOptions()
    vision_dir, llm_dir, out_dir = Path(vision_dir), Path(llm_dir), Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir}: already exists (use --force to replace it)")
    for folder in (vision_dir, llm_dir):
        if not folder.is_dir():
            raise UserError(f"{folder}: folder not found")
    vision = VisionConfig.from_dict(vision_config_of(vision_dir))
    text = TextConfig.from_dict(text_config_of(llm_dir))
    token_id, tokenizer_files = add_video_token(
        llm_dir / "tokenizer.json", llm_dir / "tokenizer_config.json"
    )
    state, origin = vision_weights(vision_dir)
    llm_state, llm_origin = llm_weights(llm_dir)
    state.update(llm_state)
    origin.update(llm_origin)
    cover_token(state, text, token_id)
    choices = {k: v for k, v in dataclasses.asdict(options).items() if k != "seed"}
    config = CrossLMMConfig(
        vision_config=vision, text_config=text, video_token_id=token_id, **choices
    )
    try:
        config.validate()
    except UserError as exc:
        raise UserError(f"composing {vision_dir} + {llm_dir}: {exc}") from None
    embed = state.get("language_model.model.embed_tokens.weight", torch.zeros(0))
    dtype = embed.dtype
    state.update(fresh_bridge_weights(config, options.seed, dtype))
    model = model_from_state_dict(config, state, origin, llm_dir, dtype)
    return save_checkpoint(
        model, out_dir, tokenizer_src=llm_dir, overwrite=force, extra_files=tokenizer_files
    )
