"""Tiny random CrossLMM models and checkpoint folders for tests.

``write_tokenizer`` writes a byte-level tokenizer (every byte is one token,
ids 0-255, then the ChatML specials) with Qwen's ChatML chat template, so any
question text round-trips and the vocabulary stays small.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslmm_edge.export.checkpoint import save_checkpoint
from crosslmm_edge.export.model import CrossLMM, build_model
from crosslmm_edge.runtime.model.config import CrossLMMConfig, TextConfig, VisionConfig

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|video_pad|>")
BYTE_VOCAB = 256
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|video_pad|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def special_id(token: str) -> int:
    """Id of a ChatML special token in ``write_tokenizer``'s vocabulary."""
    return BYTE_VOCAB + SPECIAL_TOKENS.index(token)


def write_tokenizer(folder: Path, with_video_token: bool = True) -> int:
    """Write tokenizer.json and tokenizer_config.json; return the vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS if with_video_token else SPECIAL_TOKENS[:-1]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    decoder = {
        str(special_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in specials
    }
    config = {
        "chat_template": CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "added_tokens_decoder": decoder,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return BYTE_VOCAB + len(specials)


def tiny_config(
    *,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    layers: int = 4,
    dcal_every: int = 2,
    pooled_grid: int = 2,
    v2v_scope: str = "video",
    dcal_mlp: bool = False,
    tie: bool = True,
    image_size: int = 16,
    patch_size: int = 4,
    vision_hidden: int = 12,
    max_context: int = 512,
    num_frames: int = 3,
) -> CrossLMMConfig:
    """A CrossLMM config small enough for a CPU test (vocabulary of ``write_tokenizer``)."""
    vision = VisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden + 1,
        num_hidden_layers=2,
        num_attention_heads=3,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = TextConfig(
        vocab_size=BYTE_VOCAB + len(SPECIAL_TOKENS),
        hidden_size=heads * head_dim,
        intermediate_size=3 * heads * head_dim + 1,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_context,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        eos_token_id=special_id("<|im_end|>"),
    )
    return CrossLMMConfig(
        vision_config=vision,
        text_config=text,
        pooled_grid=pooled_grid,
        dcal_every=dcal_every,
        v2v_scope=v2v_scope,
        dcal_mlp=dcal_mlp,
        video_token_id=special_id("<|video_pad|>"),
        num_frames=num_frames,
    )


def tiny_model(config: CrossLMMConfig, seed: int = 0, gates: float | None = 0.5) -> CrossLMM:
    """A random model; ``gates`` sets every DCAL gate (None keeps them at 0)."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        # nn.Embedding's N(0, 1) rows make logits of tens and one-hot softmaxes;
        # smaller rows keep sampling non-trivial and float32 error small.
        model.language_model.model.embed_tokens.weight.mul_(0.3)
        for layer in model.dcal:
            for name, param in layer.named_parameters():
                if name.endswith("gate") and gates is not None:
                    param.fill_(gates)
    return model


def save_tiny_checkpoint(
    folder: Path,
    config: CrossLMMConfig | None = None,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write a full checkpoint folder (weights, config, tokenizer files) of a tiny model."""
    model = tiny_model(config or tiny_config(), seed)
    tokenizer_dir = folder.parent / f".{folder.name}-tokenizer"
    write_tokenizer(tokenizer_dir)
    return save_checkpoint(
        model, folder, tokenizer_src=tokenizer_dir, max_shard_bytes=max_shard_bytes
    )


def write_test_video(path: Path, frames: int = 6, size: int = 24, seed: int = 0) -> Path:
    """A small mp4 of random blocks that move (uint8 RGB, via runtime.video)."""
    from crosslmm_edge.runtime.video.decode import write_video

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
    base = base.repeat(4, axis=0).repeat(4, axis=1)  # [size, size, 3] blocks survive coding
    video = np.stack([np.roll(base, 4 * t, axis=1) for t in range(frames)])
    write_video(path, video, fps=4)
    return path


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models gain nothing from two, and on a shared
    2-core machine OpenMP's spinning threads make them up to 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
