"""The LLM's self-attention KV cache, preallocated and written at positions.

One buffer [1, max_len, kvh, hd] per layer for keys and one for values, in
the backend's memory (numpy arrays on CPU). A chunk reads the views of the
valid prefix and writes its new entries into the slots right after it, so
nothing is ever copied; forking a question off the cached video prefix is
``truncate(prefix_len)``.

A shared-cache graph (``llm_spec(shared_kv=True)``, ONNX Runtime's
GroupQueryAttention) wants head-major buffers [1, kvh, max_len, hd], bound
whole as both its past and its present: it writes the chunk in place itself.
Such a graph may also write scratch rows after the chunk (its artifact's
``kv_spare_rows``): those buffers hold that many rows beyond ``capacity``.
Host copies (``prefix_arrays``, ``cache_from_prefix``) are sequence-major in
both layouts, so a saved video state does not depend on the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import DTypeLike

from ..backends.base import DeviceArray, HostArray
from ..model.contract import SEQLENS_INPUT, TOTAL_LENGTH_INPUT

Allocate = Callable[[Sequence[int], np.dtype], DeviceArray]


def host_zeros(shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
    """The default allocator: a numpy array."""
    return HostArray(np.zeros(shape, dtype=dtype))


class KVCache:
    """Per-layer K/V buffers; ``length`` leading positions are valid."""

    def __init__(
        self,
        keys: list[DeviceArray],
        values: list[DeviceArray],
        length: int = 0,
        head_major: bool = False,
        spare_rows: int = 0,
    ) -> None:
        # per layer [1, max_len, kvh, hd], or head-major [1, kvh, max_len + spare_rows, hd]
        self.keys, self.values = keys, values
        self.head_major = head_major
        spare = spare_rows if head_major else 0  # a sequence-major cache has none
        self.capacity = keys[0].shape[2 if head_major else 1] - spare
        self.length = length

    @classmethod
    def empty(
        cls,
        num_layers: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: DTypeLike = np.float32,
        allocate: Allocate = host_zeros,
        head_major: bool = False,
        spare_rows: int = 0,
    ) -> KVCache:
        """A cache with room for ``max_len`` positions and no valid entry
        (``spare_rows``: head-major only, scratch rows after them)."""
        kind = np.dtype(dtype)
        shape = (
            (1, num_kv_heads, max_len + spare_rows, head_dim)
            if head_major
            else (1, max_len, num_kv_heads, head_dim)
        )
        keys = [allocate(shape, kind) for _ in range(num_layers)]
        values = [allocate(shape, kind) for _ in range(num_layers)]
        return cls(keys, values, 0, head_major, spare_rows)

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def past_feeds(self, chunk_len: int) -> dict[str, DeviceArray | np.ndarray]:
        """The cache inputs of a run of ``chunk_len`` positions.

        ``past_key.{i}`` / ``past_value.{i}``: views of the valid prefix, or the
        whole head-major buffers with ``seqlens_k`` and ``total_sequence_length``.
        """
        feeds: dict[str, DeviceArray | np.ndarray] = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            feeds[f"past_key.{i}"] = k if self.head_major else k.rows(0, self.length)
            feeds[f"past_value.{i}"] = v if self.head_major else v.rows(0, self.length)
        if self.head_major:
            total = self.length + chunk_len
            feeds[SEQLENS_INPUT] = np.array([total - 1], dtype=np.int32)  # [1]
            feeds[TOTAL_LENGTH_INPUT] = np.array(total, dtype=np.int32)  # []
        return feeds

    def slot_targets(self, chunk_len: int) -> dict[str, DeviceArray]:
        """``present_key.{i}`` / ``present_value.{i}``: where a chunk's new entries go.

        Head-major: the whole buffers, which the graph writes in place.
        """
        end = self.length + chunk_len
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {chunk_len} > {self.capacity}")
        targets = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            targets[f"present_key.{i}"] = k if self.head_major else k.rows(self.length, end)
            targets[f"present_value.{i}"] = v if self.head_major else v.rows(self.length, end)
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
        return [self._host_rows(k) for k in self.keys], [self._host_rows(v) for v in self.values]

    def _host_rows(self, buffer: DeviceArray) -> np.ndarray:
        if self.head_major:  # [1, kvh, max_len, hd] -> [1, length, kvh, hd]
            return np.ascontiguousarray(buffer.numpy()[:, :, : self.length].transpose(0, 2, 1, 3))
        return np.array(buffer.numpy()[:, : self.length])


def cache_from_prefix(
    keys: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    max_len: int,
    upload: Callable[[np.ndarray], DeviceArray] = HostArray,
    head_major: bool = False,
    spare_rows: int = 0,
    dtype: DTypeLike | None = None,
) -> KVCache:
    """A cache of capacity ``max_len`` whose first entries are the given prefix.

    keys, values: per layer [1, length, kvh, hd] (``prefix_arrays``' layout);
    ``spare_rows`` as in ``KVCache.empty``; ``dtype``: the buffers' element type
    (default the prefix's; a saved state of another cache type is converted).
    """
    _, length, kvh, hd = keys[0].shape
    if length > max_len:
        raise ValueError(f"a prefix of {length} positions does not fit {max_len}")

    def filled(prefix: np.ndarray) -> DeviceArray:
        prefix = prefix.astype(dtype or prefix.dtype, copy=False)
        if head_major:  # [1, kvh, max_len + spare, hd]
            buffer = np.zeros((1, kvh, max_len + spare_rows, hd), dtype=prefix.dtype)
            buffer[:, :, :length] = prefix.transpose(0, 2, 1, 3)
        else:
            buffer = np.zeros((1, max_len, kvh, hd), dtype=prefix.dtype)  # [1, max_len, kvh, hd]
            buffer[:, :length] = prefix
        return upload(buffer)

    return KVCache(
        [filled(k) for k in keys], [filled(v) for v in values], length, head_major, spare_rows
    )
