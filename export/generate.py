"""Prefill, one-token decode and generation for the reference model.

Prefill and decode are separate small functions over a preallocated
``KVCache``; the video prefix is prefilled once and every question forks from
it by truncating the cache back to the prefix length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..runtime.inference.sampling import Sampler
from .dcal import CrossKV
from .kv_cache import KVCache
from .model import CrossLMM, VideoFeatures


def text_only(cross: list[CrossKV]) -> list[CrossKV]:
    """The cross K/V a text-only chunk needs: T2V kept, V2V emptied."""
    return [CrossKV(c.v2v_key[:, :0], c.v2v_value[:, :0], c.t2v_key, c.t2v_value) for c in cross]


def new_cache(model: CrossLMM, max_len: int, batch: int = 1) -> KVCache:
    """An empty cache sized for ``max_len`` positions."""
    t = model.config.text_config
    dtype = model.language_model.model.embed_tokens.weight.dtype
    return KVCache(t.num_hidden_layers, batch, max_len, t.num_key_value_heads, t.head_dim, dtype)


@torch.no_grad()
def prefill(
    model: CrossLMM,
    cache: KVCache,
    input_ids: Tensor,
    cross: list[CrossKV],
    visual_embeds: Tensor | None = None,
) -> Tensor:
    """Run a ``[text ; visual]`` chunk at the cache's end; return all its logits [B, L, V]."""
    batch = input_ids.shape[0]
    if visual_embeds is None:
        visual_embeds = model.language_model.model.embed_tokens.weight.new_zeros(batch, 0, 1)
        visual_embeds = visual_embeds.expand(batch, 0, model.config.text_config.hidden_size)
        cross = text_only(cross)
    length = input_ids.shape[1] + visual_embeds.shape[1]
    positions = torch.arange(cache.length, cache.length + length).expand(batch, length)
    logits, new_kv = model(input_ids, visual_embeds, positions, cache.past(), cross)
    cache.append(new_kv)
    return logits


@torch.no_grad()
def decode_step(model: CrossLMM, cache: KVCache, token: Tensor, cross: list[CrossKV]) -> Tensor:
    """Feed one token per sequence [B, 1]; return the next-token logits [B, V]."""
    return prefill(model, cache, token, cross)[:, -1]


def prefill_video_prefix(
    model: CrossLMM, cache: KVCache, prefix_ids: Tensor, video: VideoFeatures
) -> None:
    """Prefill ``[system + user header ; visual span]`` into an empty cache."""
    if cache.length:
        raise ValueError("the video prefix must start an empty cache")
    prefill(model, cache, prefix_ids, video.cross, video.visual_embeds)


@torch.no_grad()
def generate(
    model: CrossLMM,
    cache: KVCache,
    cross: list[CrossKV],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    sampler: Sampler | None = None,
) -> Iterator[tuple[int, float]]:
    """Prefill ``prompt_ids`` (text) at the cache's end, then decode.

    Tokens are chosen by the runtime's ``Sampler`` on float32 logits, so a
    checkpoint and its package draw the same tokens from the same seed.
    Yields (token id, its log-probability under the full-vocabulary softmax).
    A stop token is yielded and ends generation; it is not written to the cache.
    """
    sampler = sampler or Sampler()
    logits = prefill(model, cache, torch.tensor([list(prompt_ids)]), cross)[0, -1]
    for step in range(max_new_tokens):
        token, logprob = sampler.choose(logits.float().numpy())
        yield token, logprob
        if token in stop_ids or step == max_new_tokens - 1:
            return
        logits = decode_step(model, cache, torch.tensor([[token]]), cross)[0]
