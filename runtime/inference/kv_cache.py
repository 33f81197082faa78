"""The LLM's self-attention KV cache, preallocated and written at positions.

One buffer [1, max_len, kvh, hd] per layer for keys and one for values, in
the backend's memory (numpy arrays on CPU). A chunk reads the views of the
valid prefix and writes its new entries into the slots right after it, so
nothing is ever copied; forking a question off the cached video prefix is
``truncate(prefix_len)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..backends.base import DeviceArray, HostArray

Allocate = Callable[[Sequence[int], np.dtype], DeviceArray]


def host_zeros(shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
    """The default allocator: a numpy array."""
    return HostArray(np.zeros(shape, dtype=dtype))


class KVCache:
    """Per-layer K/V buffers; ``length`` leading positions are valid."""

    def __init__(self, keys: list[DeviceArray], values: list[DeviceArray], length: int = 0) -> None:
        self.keys, self.values = keys, values  # per layer [1, max_len, kvh, hd]
        self.capacity = keys[0].shape[1]
        self.length = length

    @classmethod
    def empty(
        cls,
        num_layers: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: np.dtype = np.float32,
        allocate: Allocate = host_zeros,
    ) -> KVCache:
        """A cache with room for ``max_len`` positions and no valid entry."""
        shape = (1, max_len, num_kv_heads, head_dim)
        keys = [allocate(shape, dtype) for _ in range(num_layers)]
        return cls(keys, [allocate(shape, dtype) for _ in range(num_layers)])

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def past_feeds(self) -> dict[str, DeviceArray]:
        """``past_key.{i}`` / ``past_value.{i}``: views of the valid prefix."""
        feeds = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            feeds[f"past_key.{i}"] = k.rows(0, self.length)
            feeds[f"past_value.{i}"] = v.rows(0, self.length)
        return feeds

    def slot_targets(self, chunk_len: int) -> dict[str, DeviceArray]:
        """``present_key.{i}`` / ``present_value.{i}``: where a chunk's new entries go."""
        end = self.length + chunk_len
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {chunk_len} > {self.capacity}")
        targets = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            targets[f"present_key.{i}"] = k.rows(self.length, end)
            targets[f"present_value.{i}"] = v.rows(self.length, end)
        return targets

    def advance(self, chunk_len: int) -> None:
        """Mark the entries just written by a chunk as valid."""
        if self.length + chunk_len > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {chunk_len} > {self.capacity}")
        self.length += chunk_len

    def truncate(self, length: int) -> None:
        """Forget every entry from ``length`` on (later chunks overwrite them)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} to {length}")
        self.length = length

    def prefix_arrays(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Host copies of the valid entries, per layer: keys, values [1, length, kvh, hd]."""
        keys = [np.array(k.numpy()[:, : self.length]) for k in self.keys]
        values = [np.array(v.numpy()[:, : self.length]) for v in self.values]
        return keys, values


def cache_from_prefix(
    keys: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    max_len: int,
    upload: Callable[[np.ndarray], DeviceArray] = HostArray,
) -> KVCache:
    """A cache of capacity ``max_len`` whose first entries are the given prefix."""
    _, length, kvh, hd = keys[0].shape
    if length > max_len:
        raise ValueError(f"a prefix of {length} positions does not fit {max_len}")

    def filled(prefix: np.ndarray) -> DeviceArray:
        buffer = np.zeros((1, max_len, kvh, hd), dtype=prefix.dtype)  # [1, max_len, kvh, hd]
        buffer[:, :length] = prefix
        return upload(buffer)

    return KVCache([filled(k) for k in keys], [filled(v) for v in values], length)
