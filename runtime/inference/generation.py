"""Prefill and decode over the LLM graph, and the streaming generation loop.

Every call runs one chunk ``[text ; visual]`` at the end of the KV cache: the
graph reads the valid prefix in place and writes the chunk's new entries into
the slots after it (docs/package-format.md), so no step copies the cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import DeviceArray, GraphSession
from .kv_cache import KVCache
from .sampling import Sampler

CrossFeeds = Mapping[str, np.ndarray | DeviceArray]

# Positions one LLM run prefills at most (= the TensorRT text profile's cap).
DEFAULT_MAX_CHUNK_TOKENS = 512
# Bytes one attention's float32 score tensor may take in a prefill piece: pieces shrink
# as the past (self-attention) or the memory (DCAL) grows, so long prompts and long
# videos prefill in bounded memory. 32 MiB measured best on the 0.5B shape on CPU
# (`bench --suite prefill`): smaller pieces re-read the weights more often, larger
# ones grow the scores and run no faster.
DEFAULT_MAX_SCORE_BYTES = 32 << 20


def piece_tokens(num_heads: int, past: int, memory: int, limit: int, max_score_bytes: int) -> int:
    """Positions per prefill piece: at most ``limit``, and few enough that one attention's
    float32 scores [heads, piece, keys] stay within ``max_score_bytes`` (keys: the past
    plus the piece for self-attention, ``memory`` for the DCAL cross-attention)."""
    per_query = 4 * num_heads * max(past + limit, memory)
    return max(1, min(limit, max_score_bytes // per_query))


def largest_visual_piece(
    num_heads: int,
    pooled: int,
    patches: int,
    frames: int,
    frame_scope: bool,
    limit: int = DEFAULT_MAX_CHUNK_TOKENS,
    max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES,
) -> int:
    """Most visual positions ``Pipeline.prefill`` puts in one run for a ``frames``-frame video.

    Pieces are whole frames and largest on an empty cache. With ``frame_scope`` a
    piece reads the V2V memory of its own frames (at most ``limit // pooled``
    of them, or all when the video is shorter and prefilled in one run);
    otherwise every piece reads all ``frames`` frames' memory. TensorRT
    profiles built to this size reserve no activation memory for larger runs.
    """
    limit = max(limit, pooled)
    memory_frames = min(frames, limit // pooled) if frame_scope else frames
    piece = piece_tokens(num_heads, 0, memory_frames * patches, limit, max_score_bytes)
    return min(frames, max(1, piece // pooled)) * pooled


@dataclass(frozen=True)
class ChunkShapes:
    """What an empty part of a chunk looks like for this LLM graph."""

    hidden_size: int
    num_kv_heads: int
    head_dim: int
    dtype: np.dtype

    def no_visual(self) -> np.ndarray:
        return np.zeros((1, 0, self.hidden_size), dtype=self.dtype)  # [1, 0, D]

    def no_memory(self) -> np.ndarray:
        return np.zeros((1, 0, self.num_kv_heads, self.head_dim), dtype=self.dtype)


def run_chunk(
    llm: GraphSession,
    cache: KVCache,
    input_ids: Sequence[int],
    visual_embeds: np.ndarray | DeviceArray,
    cross: CrossFeeds,
) -> np.ndarray:
    """Run ``[input_ids ; visual_embeds]`` at the cache's end; return the last logits [V]."""
    length = len(input_ids) + visual_embeds.shape[1]
    start = cache.length
    feeds = {
        "input_ids": np.asarray(input_ids, dtype=np.int64).reshape(1, -1),  # [1, S]
        "visual_embeds": visual_embeds,  # [1, Nv, D]
        "position_ids": np.arange(start, start + length, dtype=np.int64)[None],  # [1, S+Nv]
        **cache.past_feeds(length),
        **cross,
    }
    logits = llm.run(feeds, write_to=cache.slot_targets(length), fetch=["logits"])["logits"]
    cache.advance(length)
    # [V]; all-logits graphs too. May be the session's reused buffer: valid until its next run.
    return logits[0, -1] if logits.ndim == 3 else logits.reshape(-1)


def prefill_text(
    llm: GraphSession,
    cache: KVCache,
    input_ids: Sequence[int],
    text_cross: CrossFeeds,
    shapes: ChunkShapes,
) -> np.ndarray:
    """A text-only chunk (question, later turn); ``text_cross`` has empty V2V."""
    return run_chunk(llm, cache, input_ids, shapes.no_visual(), text_cross)


def decode_step(
    llm: GraphSession, cache: KVCache, token: int, text_cross: CrossFeeds, shapes: ChunkShapes
) -> np.ndarray:
    """Feed one token; return the next-token logits [V]."""
    return run_chunk(llm, cache, [token], shapes.no_visual(), text_cross)


def stream_tokens(
    llm: GraphSession,
    cache: KVCache,
    text_cross: CrossFeeds,
    shapes: ChunkShapes,
    prompt_ids: Sequence[int],
    sampler: Sampler,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    with_logprobs: bool = True,
) -> Iterator[tuple[int, float]]:
    """Prefill ``prompt_ids`` then decode; yield (token, log-probability) as they come.

    Log-probabilities are NaN unless ``with_logprobs``. A stop token is
    yielded and ends generation; like the last token of a ``max_new_tokens``
    cut, it is not written to the cache (a follow-up turn feeds what it needs).
    """
    logits = prefill_text(llm, cache, prompt_ids, text_cross, shapes)
    for step in range(max_new_tokens):
        token, logprob = sampler.choose(logits, with_logprobs)
        yield token, logprob
        if token in stop_ids or step == max_new_tokens - 1:
            return
        logits = decode_step(llm, cache, token, text_cross, shapes)
