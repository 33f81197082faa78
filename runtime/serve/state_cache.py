"""Video states kept between requests: least recently used go first, bounded in bytes.

A state is the encoded video (visual embeddings, cross K/V) with the KV
cache of its prefix; it is keyed by the ``StateKey`` saved states use (the
video's sha256, the frames sampled, the artifacts that ran) and the system
prompt, which is part of the prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..video.video_state import StateKey, VideoState


@dataclass(frozen=True)
class CacheKey:
    """What a cached prefix is valid for."""

    state: StateKey
    system: str | None


def state_bytes(state: VideoState) -> int:
    """Bytes the arrays of ``state`` hold."""
    arrays = [state.visual_embeds, *state.cross.values()]
    arrays += [*(state.prefix_keys or []), *(state.prefix_values or [])]
    return sum(array.nbytes for array in arrays)


class StateCache:
    """``CacheKey`` -> ``VideoState`` (with its prefix), at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._states: OrderedDict[CacheKey, tuple[VideoState, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: CacheKey) -> VideoState | None:
        """The state of ``key`` (now the most recently used), or None."""
        found = self._states.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._states.move_to_end(key)
        return found[0]

    def put(self, key: CacheKey, state: VideoState) -> None:
        """Keep ``state``; older states go until the bound holds (a state over it is not kept)."""
        size = state_bytes(state)
        self.discard(key)
        if size > self.max_bytes:
            return
        self._states[key] = (state, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._states.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def discard(self, key: CacheKey) -> None:
        """Forget ``key`` if kept."""
        found = self._states.pop(key, None)
        if found is not None:
            self.bytes -= found[1]

    def __len__(self) -> int:
        return len(self._states)

    def stats(self) -> dict[str, int]:
        """Counters for ``/health``."""
        return {
            "states": len(self._states),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
