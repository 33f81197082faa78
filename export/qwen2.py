"""Qwen2 / Qwen2.5 decoder parts; module names equal ``Qwen2ForCausalLM``'s keys.

The layer loop lives in ``model.py`` because DCAL layers are interleaved there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..runtime.model.config import TextConfig
from .attention import causal_attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(position_ids: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """RoPE tables for ``position_ids`` [B, L] -> cos, sin [B, L, 1, hd] (float32)."""
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device)
    exponent = steps.float() / head_dim
    inv_freq = 1.0 / (theta**exponent)  # [hd/2]
    freqs = position_ids.float().unsqueeze(-1) * inv_freq  # [B, L, hd/2]
    angles = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)  # [B, L, 1, hd]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, L, heads, hd] by the RoPE tables (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Qwen2Attention(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        dim, kv_dim = config.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(dim, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(dim, kv_dim, bias=True)
        self.v_proj = nn.Linear(dim, kv_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, dim, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, k_past: Tensor, v_past: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attend ``x`` [B, L, D] causally over the cache and itself.

        Returns the output [B, L, D] and this chunk's new cache entries
        k, v [B, L, kvh, hd] (RoPE already applied to k).
        """
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, length, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = causal_attention(q, k_past, v_past, k, v)  # [B, L, H, hd]
        return self.o_proj(out.reshape(b, length, self.num_heads * self.head_dim)), k, v


class Qwen2MLP(nn.Module):
    """SwiGLU feed-forward (also the optional DCAL MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen2Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen2MLP(config.hidden_size, config.intermediate_size)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, k_past: Tensor, v_past: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        attn, k, v = self.self_attn(self.input_layernorm(x), cos, sin, k_past, v_past)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Qwen2Model(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Qwen2DecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen2ForCausalLM(nn.Module):
    """``language_model.*``: the decoder and, unless tied, its own ``lm_head``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def head_weight(self) -> Tensor:
        """The output projection [V, D] (the embedding table when tied)."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight
