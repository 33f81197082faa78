"""Video states and conversations kept between requests, bounded in bytes (LRU).

A video state is the encoded video (visual embeddings, cross K/V) with the
KV cache of its prefix; it is keyed by the ``StateKey`` saved states use (the
video's sha256, the frames sampled, the artifacts that ran) and the system
prompt, which is part of the prefix. A conversation is such a state whose KV
cache runs on through the turns, keyed by the video and the turns' text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..video.video_state import StateKey, VideoState

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheKey:
    """What a cached prefix is valid for."""

    state: StateKey
    system: str | None


@dataclass
class Conversation:
    """A video state whose KV cache holds ``turns`` after the prefix."""

    turns: list[tuple[str, str]]  # (question, answer) text, as clients send them back
    pending_ids: list[int]  # the last answer's token the cache does not hold yet
    state: VideoState


def state_bytes(state: VideoState) -> int:
    """Bytes the arrays of ``state`` hold."""
    arrays = [state.visual_embeds, *state.cross.values()]
    arrays += [*(state.prefix_keys or []), *(state.prefix_values or [])]
    return sum(array.nbytes for array in arrays)


class StateCache(Generic[K, V]):
    """``key`` -> value, at most ``max_bytes`` in all; the least recently used go first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, nbytes: int) -> None:
        """Keep ``value``; older ones go until the bound holds (one over it is not kept)."""
        self.pop(key)
        if nbytes > self.max_bytes:
            return
        self._entries[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def pop(self, key: K) -> V | None:
        """Take ``key`` out (None when not kept)."""
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self.bytes -= found[1]
        return found[0]

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Counters for ``/health``."""
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
