"""Dual Cross-Attention Layer (spec section 2).

Built from injected parts (torchtune style): two cross-attentions sharing the
LLM's head layout, zero-initialised tanh gates, and an optional gated MLP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..runtime.model.config import CrossLMMConfig
from .attention import full_attention
from .qwen2 import Qwen2MLP, RMSNorm

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # q [B,L,H,hd], k, v [B,M,kvh,hd] -> [B,L,H,hd]


@dataclass
class CrossKV:
    """One DCAL's memory, projected once: each tensor is [B, M, kvh, hd].

    ``v2v_*`` are needed only while visual tokens are prefilled; ``t2v_*`` by
    every text token, so they live as long as the video state.
    """

    v2v_key: Tensor
    v2v_value: Tensor
    t2v_key: Tensor
    t2v_value: Tensor


class CrossAttention(nn.Module):
    """GQA cross-attention from sequence positions to the memory, no RoPE."""

    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, attend: Attend = full_attention
    ) -> None:
        super().__init__()
        self.attend = attend  # the attention kernel, injected (full_attention exports)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory [B, M, D] -> key, value [B, M, kvh, hd]."""
        shape = (*memory.shape[:2], self.num_kv_heads, self.head_dim)
        return self.k_proj(memory).view(shape), self.v_proj(memory).view(shape)

    def queries(self, x: Tensor) -> Tensor:
        """x [B, L, D] -> q [B, L, H, hd]."""
        return self.q_proj(x).view(*x.shape[:2], self.num_heads, self.head_dim)

    def forward(self, x: Tensor, key: Tensor, value: Tensor) -> Tensor:
        out = self.attend(self.queries(x), key, value)  # [B, L, H, hd]
        return self.o_proj(out.reshape(*x.shape[:2], self.num_heads * self.head_dim))


class DCAL(nn.Module):
    """``dcal.{j}``: V2V on visual positions, T2V on text positions, optional MLP."""

    def __init__(self, config: CrossLMMConfig, attend: Attend = full_attention) -> None:
        super().__init__()
        t = config.text_config
        dim, eps = t.hidden_size, t.rms_norm_eps
        self.tokens_per_frame = config.tokens_per_frame
        self.memory_per_frame = config.vision_config.num_patches
        self.frame_scope = config.v2v_scope == "frame"
        self.v2v_norm = RMSNorm(dim, eps)
        self.t2v_norm = RMSNorm(dim, eps)
        heads = (t.num_attention_heads, t.num_key_value_heads)
        self.v2v_attn = CrossAttention(dim, *heads, attend)
        self.t2v_attn = CrossAttention(dim, *heads, attend)
        self.v2v_gate = nn.Parameter(torch.zeros(1))
        self.t2v_gate = nn.Parameter(torch.zeros(1))
        self.has_mlp = config.dcal_mlp
        if self.has_mlp:
            self.mlp_norm = RMSNorm(dim, eps)
            self.mlp = Qwen2MLP(dim, t.intermediate_size)
            self.mlp_gate = nn.Parameter(torch.zeros(1))

    def project_memory(self, memory: Tensor) -> CrossKV:
        """memory [B, M, D] -> the cross K/V both attentions will read."""
        vk, vv = self.v2v_attn.project_memory(memory)
        tk, tv = self.t2v_attn.project_memory(memory)
        return CrossKV(vk, vv, tk, tv)

    def forward(self, text: Tensor, visual: Tensor, cross: CrossKV) -> tuple[Tensor, Tensor]:
        """Update the chunk's text part [B, S, D] and visual part [B, Nv, D].

        With ``v2v_scope == "frame"``, ``cross.v2v_*`` must hold exactly the
        memory of the chunk's frames, in order (Nv / P frames).
        """
        text = text + torch.tanh(self.t2v_gate) * self.t2v_attn(
            self.t2v_norm(text), cross.t2v_key, cross.t2v_value
        )
        visual = visual + torch.tanh(self.v2v_gate) * self._v2v(visual, cross)
        if self.has_mlp:
            text = text + torch.tanh(self.mlp_gate) * self.mlp(self.mlp_norm(text))
            visual = visual + torch.tanh(self.mlp_gate) * self.mlp(self.mlp_norm(visual))
        return text, visual

    def _v2v(self, visual: Tensor, cross: CrossKV) -> Tensor:
        x = self.v2v_norm(visual)
        if not self.frame_scope:
            return self.v2v_attn(x, cross.v2v_key, cross.v2v_value)
        # Fold frames into the batch: pooled tokens of frame t see frame t only.
        b, nv, d = x.shape
        frames = nv // self.tokens_per_frame
        x = x.reshape(b * frames, self.tokens_per_frame, d)
        kv_shape = (b * frames, self.memory_per_frame, *cross.v2v_key.shape[2:])
        out = self.v2v_attn(x, cross.v2v_key.reshape(kv_shape), cross.v2v_value.reshape(kv_shape))
        return out.reshape(b, nv, d)
