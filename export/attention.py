"""Attention math shared by self-attention and the DCAL cross-attention.

Tensors use the sequence-major layout ``[B, L, heads, head_dim]`` everywhere,
which is also the KV-cache layout: a cache preallocated as ``[B, max_len, kvh,
hd]`` gives its first ``P`` positions as a contiguous view when B == 1.

Grouped-query attention never repeats K/V: queries are viewed as
``[B, kvh, groups, L, hd]`` and broadcast against ``[B, kvh, 1, hd, M]`` keys.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_queries(q: Tensor, num_kv_heads: int) -> Tensor:
    # q: [B, L, H, hd] -> [B, kvh, G, L, hd]
    b, length, h, d = q.shape
    return q.reshape(b, length, num_kv_heads, h // num_kv_heads, d).permute(0, 2, 3, 1, 4)


def _scores(qg: Tensor, k: Tensor) -> Tensor:
    # qg: [B, kvh, G, L, hd], k: [B, M, kvh, hd] -> [B, kvh, G, L, M]
    return torch.matmul(qg, k.permute(0, 2, 3, 1).unsqueeze(2))


def _weighted_values(p: Tensor, v: Tensor) -> Tensor:
    # p: [B, kvh, G, L, M], v: [B, M, kvh, hd] -> [B, kvh, G, L, hd]
    return torch.matmul(p, v.permute(0, 2, 1, 3).unsqueeze(2))


def _ungroup(out: Tensor) -> Tensor:
    # [B, kvh, G, L, hd] -> [B, L, H, hd]
    b, kvh, g, length, d = out.shape
    return out.permute(0, 3, 1, 2, 4).reshape(b, length, kvh * g, d)


def causal_attention(
    q: Tensor, k_past: Tensor, v_past: Tensor, k_new: Tensor, v_new: Tensor
) -> Tensor:
    """Causal attention of ``L`` new queries over ``P`` cached and ``L`` new keys.

    The past and new keys are scored separately and only the small score
    tensors are concatenated, so the cache itself is never copied.

    q: [B, L, H, hd]; k_past, v_past: [B, P, kvh, hd]; k_new, v_new: [B, L, kvh, hd].
    Returns [B, L, H, hd]. Softmax runs in float32.
    """
    kvh = k_new.shape[2]
    scale = q.shape[-1] ** -0.5
    qg = _group_queries(q, kvh) * scale  # [B, kvh, G, L, hd]
    s_past = _scores(qg, k_past).float()  # [B, kvh, G, L, P]
    s_new = _scores(qg, k_new).float()  # [B, kvh, G, L, L]
    length = q.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    s_new = s_new.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(torch.cat([s_past, s_new], dim=-1), dim=-1).to(q.dtype)
    past_len = k_past.shape[1]
    out = _weighted_values(probs[..., :past_len], v_past)
    out = out + _weighted_values(probs[..., past_len:], v_new)
    return _ungroup(out)


def full_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Unmasked attention (vision encoder, cross-attention to the memory).

    q: [B, L, H, hd]; k, v: [B, M, kvh, hd]. Returns [B, L, H, hd].
    """
    qg = _group_queries(q, k.shape[2]) * q.shape[-1] ** -0.5
    probs = torch.softmax(_scores(qg, k).float(), dim=-1).to(q.dtype)
    return _ungroup(_weighted_values(probs, v))
