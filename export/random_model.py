"""Random-weight checkpoints of real model shapes, for benchmarks and memory plans.

No model hub is reachable from the machines this project is tested on, and a
user sizing a device needs the shapes, not the weights. Each preset names the
LLM whose layer widths it copies; the vision tower is SigLIP-shaped. The
tokenizer files are the embedded model's (ids below its vocabulary), so
``ask`` runs end to end on any preset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..models import embedded_model_dir
from ..runtime.errors import UserError
from ..runtime.model.config import CrossLMMConfig, TextConfig, VisionConfig
from .checkpoint import GENERATION_CONFIG, save_checkpoint
from .model import CrossLMM

# LLM widths of the named models; the 0.5B preset keeps a small vision tower so a
# 2-core machine can export and run it, the 2B preset is the spec's full size.
PRESETS = {
    "qwen2.5-0.5b": (
        TextConfig(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
        ),
        VisionConfig(
            hidden_size=192,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=3,
            image_size=224,
            patch_size=14,
        ),
    ),
    "crosslmm-2b": (TextConfig(), VisionConfig()),
}
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", GENERATION_CONFIG)


def preset_config(preset: str, num_frames: int = 32) -> CrossLMMConfig:
    """The config of ``preset`` with the embedded tokenizer's special ids."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    text, vision = PRESETS[preset]
    text = TextConfig(**{**text.to_dict(), "eos_token_id": 2})
    return CrossLMMConfig(
        vision_config=VisionConfig.from_dict(vision.to_dict()),
        text_config=text,
        video_token_id=3,  # <|video_pad|> of the embedded tokenizer
        num_frames=num_frames,
    )


def random_checkpoint(
    folder: str | Path, preset: str, num_frames: int = 32, seed: int = 0, force: bool = False
) -> Path:
    """Write a checkpoint of ``preset``'s shape with N(0, 0.02) weights (norms at 1)."""
    config = preset_config(preset, num_frames)
    with torch.device("meta"):
        model = CrossLMM(config)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("gate"):
                param.fill_(0.5)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    staging = Path(folder).parent / f".{Path(folder).name}-tokenizer"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for name in TOKENIZER:
            shutil.copyfile(embedded_model_dir() / name, staging / name)
        return save_checkpoint(model, folder, tokenizer_src=staging, overwrite=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
