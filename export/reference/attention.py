"""Attention math shared by self-attention and the DCAL cross-attention.

Tensors use the sequence-major layout ``[B, L, heads, head_dim]`` everywhere,
which is also the KV-cache layout: a cache preallocated as ``[B, max_len, kvh,
hd]`` gives its first ``P`` positions as a contiguous view when B == 1.

Grouped-query attention never repeats K/V. With batch 1 (every exported
graph) keys are read as ``[M, kvh, hd]`` and permuted to ``[kvh, hd, M]``,
the one pattern ONNX Runtime folds into ``FusedMatMul(transBatchB, transB)``:
the cache and the T2V memory are consumed where they lie, never copied. Other
batch sizes (training) take the general 5-D path.

Past and new keys are scored separately; only the score tensors are
concatenated for the softmax, never the cache.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_queries(q: Tensor, num_kv_heads: int) -> Tensor:
    # q: [B, L, H, hd] -> [kvh, G·L, hd] (B == 1) or [B, kvh, G, L, hd]
    b, length, h, d = q.shape
    grouped = q.reshape(b, length, num_kv_heads, h // num_kv_heads, d)
    if b == 1:
        return grouped[0].permute(1, 2, 0, 3).reshape(num_kv_heads, (h // num_kv_heads) * length, d)
    return grouped.permute(0, 2, 3, 1, 4)


def _scores(qg: Tensor, k: Tensor) -> Tensor:
    # k: [B, M, kvh, hd]; -> [kvh, G·L, M] (B == 1) or [B, kvh, G, L, M]
    if qg.dim() == 3:
        return torch.matmul(qg, k.squeeze(0).permute(1, 2, 0))
    return torch.matmul(qg, k.permute(0, 2, 3, 1).unsqueeze(2))


def _weighted_values(p: Tensor, v: Tensor) -> Tensor:
    # p: scores' shape; v: [B, M, kvh, hd] -> [kvh, G·L, hd] or [B, kvh, G, L, hd]
    if p.dim() == 3:
        return torch.matmul(p, v.squeeze(0).permute(1, 0, 2))
    return torch.matmul(p, v.permute(0, 2, 1, 3).unsqueeze(2))


def _ungroup(out: Tensor, length: int, heads: int) -> Tensor:
    # [kvh, G·L, hd] or [B, kvh, G, L, hd] -> [B, L, H, hd]
    if out.dim() == 3:
        kvh, _, d = out.shape
        grouped = out.reshape(kvh, heads // kvh, length, d)
        return grouped.permute(2, 0, 1, 3).reshape(1, length, heads, d)
    b, kvh, g, _, d = out.shape
    return out.permute(0, 3, 1, 2, 4).reshape(b, length, kvh * g, d)


def _causal_mask(scores: Tensor, length: int) -> Tensor:
    """-inf above the diagonal of the new-key scores (last two dims are G·L or L, L).

    Added as a float [L, L] bias (built once per graph run) rather than a
    masked_fill per layer: ONNX Runtime's broadcasting ``Where`` is slower than ``Add``.
    """
    full = torch.full((length, length), float("-inf"), dtype=scores.dtype, device=scores.device)
    bias = full.triu(1)  # [L, L]: -inf above the diagonal, 0 on and below it
    if scores.dim() == 3:  # rows are (group, position): tile the mask over groups
        kvh, rows, _ = scores.shape
        masked = scores.reshape(kvh, rows // length, length, length)  # length ≥ 1 here
        return (masked + bias).reshape(kvh, rows, length)
    return scores + bias


def causal_attention(
    q: Tensor, k_past: Tensor, v_past: Tensor, k_new: Tensor, v_new: Tensor
) -> Tensor:
    """Causal attention of ``L`` new queries over ``P`` cached and ``L`` new keys.

    The past and new keys are scored separately and only the score tensors are
    concatenated, so the cache itself is never copied. (A shared log-sum-exp
    would avoid that concatenation too, but it reduces over the past axis,
    which is empty for a first chunk, and ONNX Runtime before 1.2x returns an
    empty tensor for such a reduction and then crashes: the Jetson builds are old.)

    q: [B, L, H, hd]; k_past, v_past: [B, P, kvh, hd]; k_new, v_new: [B, L, kvh, hd].
    Returns [B, L, H, hd]. Softmax runs in float32.
    """
    length = q.shape[1]
    qg = _group_queries(q, k_new.shape[2]) * q.shape[-1] ** -0.5
    s_past = _scores(qg, k_past).float()  # [.., P]
    s_new = _causal_mask(_scores(qg, k_new).float(), length)  # [.., L]
    probs = torch.softmax(torch.cat([s_past, s_new], dim=-1), dim=-1).to(q.dtype)
    past_len = k_past.shape[1]
    out = _weighted_values(probs[..., :past_len], v_past)
    out = out + _weighted_values(probs[..., past_len:], v_new)
    return _ungroup(out, length, q.shape[2])


def full_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Unmasked attention (vision encoder, cross-attention to the memory).

    q: [B, L, H, hd]; k, v: [B, M, kvh, hd]. Returns [B, L, H, hd].
    """
    qg = _group_queries(q, k.shape[2]) * q.shape[-1] ** -0.5
    probs = torch.softmax(_scores(qg, k).float(), dim=-1).to(q.dtype)
    return _ungroup(_weighted_values(probs, v), q.shape[1], q.shape[2])


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``full_attention`` through torch's fused SDPA kernels (flash, memory-efficient).

    The same math without materialising the scores, for running the reference
    on a GPU; not for export (the graphs keep standard ops). Unmasked, so each
    KV head's query group is folded into the query axis and K/V are not repeated.
    q: [B, L, H, hd]; k, v: [B, M, kvh, hd]. Returns [B, L, H, hd].
    """
    b, length, h, d = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, length, kvh, h // kvh, d).permute(0, 2, 3, 1, 4)  # [B, kvh, G, L, hd]
    qg = qg.reshape(b, kvh, (h // kvh) * length, d)
    out = torch.nn.functional.scaled_dot_product_attention(
        qg, k.transpose(1, 2), v.transpose(1, 2)
    )  # [B, kvh, G·L, hd]
    return out.reshape(b, kvh, h // kvh, length, d).permute(0, 3, 1, 2, 4).reshape(b, length, h, d)
