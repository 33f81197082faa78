"""The tiny CrossLMM config and the batched forward used in training.

The shipped model is exactly the spec architecture; the auxiliary heads here
are training-only (they read the vision features and are never saved).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crosslmm_edge.calibration import synthetic_world as world
from crosslmm_edge.export.dcal import CrossKV
from crosslmm_edge.export.model import CrossLMM
from crosslmm_edge.export.projector import pool_tokens
from crosslmm_edge.runtime.model.config import CrossLMMConfig, TextConfig, VisionConfig

NUM_FRAMES = 8


def tiny_config(vocab_size: int, video_token_id: int, eos_token_id: int) -> CrossLMMConfig:
    """32×32 frames, patch 4 (64 tokens), 2×2 pooled tokens per frame, DCAL every 2 layers."""
    vision = VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=world.FRAME_SIZE,
        patch_size=world.PATCH,
    )
    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
    )
    return CrossLMMConfig(
        vision_config=vision,
        text_config=text,
        pooled_grid=2,
        pool_mode="bilinear",
        dcal_every=2,
        v2v_scope="video",
        video_token_id=video_token_id,
        num_frames=NUM_FRAMES,
    )


class AuxHeads(nn.Module):
    """Per-token attribute heads on pooled tokens, a per-patch dot head on all tokens.

    Every pooled token on its own must tell the frame's colour, shape and the
    shape's absolute position: the LLM sees which token of a frame is which
    only through relative RoPE positions, so a position carried by *which*
    token lights up is hard for it to read, while one carried in each
    token's content is easy to compare across frames.
    """

    def __init__(self, vision_dim: int) -> None:
        super().__init__()
        cells = world.FRAME_SIZE // world.PATCH
        self.sizes = (len(world.COLOURS), len(world.SHAPES), cells, cells)
        self.frame = nn.Linear(vision_dim, sum(self.sizes))
        self.patch = nn.Linear(vision_dim, len(world.COLOURS) + 1)  # class 0: no dot

    def forward(self, pooled: Tensor, features: Tensor) -> tuple[list[Tensor], Tensor]:
        """pooled [F, P, Dv], features [F, N, Dv] -> per-token logits [F·P, C], patch logits."""
        frame_logits = self.frame(pooled.flatten(0, 1)).split(self.sizes, dim=-1)
        return list(frame_logits), self.patch(features)


def encode_videos(model: CrossLMM, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor, list[CrossKV]]:
    """pixels [B, T, 3, H, W] -> features [B·T, N, Dv], pooled [B·T, P, Dv],
    visual embeds [B, T·P, D], cross K/V per DCAL ([B, T·N, kvh, hd])."""
    b = pixels.shape[0]
    features = model.encode_frames(pixels.flatten(0, 1))  # [B·T, N, Dv]
    pooled = pool_tokens(features, model.config.pooled_grid, model.config.pool_mode)
    width = model.config.text_config.hidden_size
    embeds = model.projector(pooled).reshape(b, -1, width)
    memory = model.projector(features).reshape(b, -1, width)
    return features, pooled, embeds, [layer.project_memory(memory) for layer in model.dcal]


def repeat_rows(x: Tensor, times: int) -> Tensor:
    """[B, ...] -> [B·times, ...], each row repeated ``times`` times in a row."""
    return x.unsqueeze(1).expand(x.shape[0], times, *x.shape[1:]).flatten(0, 1)


def answer_logits(
    model: CrossLMM, prefix_ids: list[int], embeds: Tensor, cross: list[CrossKV], qa_ids: Tensor
) -> Tensor:
    """Prefill ``[prefix ; visual]`` per video, then each video's question chunks.

    embeds [B, T·P, D]; qa_ids [B·Q, L] (Q chunks per video, video-major).
    Returns the question chunks' logits [B·Q, L, V].
    """
    b = embeds.shape[0]
    per_video = qa_ids.shape[0] // b
    prefix = torch.tensor([prefix_ids]).expand(b, -1)
    length = prefix.shape[1] + embeds.shape[1]
    positions = torch.arange(length).expand(b, length)
    _, past = model(prefix, embeds, positions, model.empty_past(b), cross)
    past = [(repeat_rows(k, per_video), repeat_rows(v, per_video)) for k, v in past]
    # Text chunks need only T2V; V2V is emptied as generate.text_only does.
    text_cross = [
        CrossKV(
            c.v2v_key.new_zeros(b * per_video, 0, *c.v2v_key.shape[2:]),
            c.v2v_value.new_zeros(b * per_video, 0, *c.v2v_value.shape[2:]),
            repeat_rows(c.t2v_key, per_video),
            repeat_rows(c.t2v_value, per_video),
        )
        for c in cross
    ]
    q_len = qa_ids.shape[1]
    q_positions = torch.arange(length, length + q_len).expand(qa_ids.shape[0], q_len)
    no_visual = embeds.new_zeros(qa_ids.shape[0], 0, embeds.shape[2])
    logits, _ = model(qa_ids, no_visual, q_positions, past, text_cross)
    return logits


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Hugging Face style init: linear and embedding weights N(0, std), biases 0.

    PyTorch's default N(0, 1) embeddings, tied to the output head, start the
    loss in the hundreds; gates and norms keep their spec values.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
