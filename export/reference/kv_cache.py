"""A preallocated KV cache written at positions (gpt-fast style)."""

from __future__ import annotations

import torch
from torch import Tensor

KV = tuple[Tensor, Tensor]


class KVCache:
    """Per-layer K/V buffers [B, max_len, kvh, hd]; ``length`` entries are valid.

    Forking a question off a cached prefix is ``truncate(prefix_length)``: the
    entries after it are simply overwritten, nothing is copied.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch, max_len, num_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def past(self) -> list[KV]:
        """Views of the valid entries, one (k, v) per layer."""
        pairs = zip(self.keys, self.values, strict=True)
        return [(k[:, : self.length], v[:, : self.length]) for k, v in pairs]

    def append(self, new_kv: list[KV]) -> None:
        """Write a chunk's new entries [B, L, kvh, hd] after the valid ones."""
        step = new_kv[0][0].shape[1]
        if self.length + step > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {step} > {self.capacity}")
        end = self.length + step
        for (k, v), kb, vb in zip(new_kv, self.keys, self.values, strict=True):
            kb[:, self.length : end] = k
            vb[:, self.length : end] = v
        self.length = end

    def truncate(self, length: int) -> None:
        """Forget every entry from ``length`` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} to {length}")
        self.length = length
