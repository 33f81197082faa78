"""Suite ``context``: decode time per token as the cache grows, against the bytes it reads."""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..runtime.inference.sampling import Sampler
from .models import BenchModel
from .ours import open_pipeline, video_cache
from .suite_decode import step_bytes

PASTS = (128, 512, 1024, 2048, 4096)


def _step_ms(pipeline, past: int, steps: int) -> float:
    """Median ms of ``steps`` decode steps after ``past`` cached positions (random K/V)."""
    prefix = 4 + pipeline.dims.tokens_per_frame
    cache, text = video_cache(pipeline, 1, past + steps + 2)
    rng = np.random.default_rng(0)
    for buffer in (*cache.keys, *cache.values):  # content is irrelevant to the time
        rows = buffer.numpy()[:, prefix:past]
        rows[...] = rng.standard_normal(rows.shape).astype(rows.dtype)
    cache.advance(past - prefix)
    no_visual, sampler, times = pipeline.shapes.no_visual(), Sampler(), []
    logits = pipeline.prefill(cache, [5], no_visual, text)
    for _ in range(steps):
        token, _ = sampler.choose(logits, False)
        start = time.perf_counter()
        logits = pipeline.prefill(cache, [token], no_visual, text)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_context(model: BenchModel, args, machine: dict) -> dict:
    """Per-token decode time at each past length; measured and byte-predicted ratios."""
    pipeline = open_pipeline(model.package, args.threads)
    room = pipeline.package.max_context - args.context_steps - 2  # the last point may be clamped
    pasts = sorted({min(p, room) for p in PASTS})
    rounds: dict[int, list[float]] = {p: [] for p in pasts}
    for _ in range(args.repeats):  # interleaved over past lengths
        for past in pasts:
            rounds[past].append(_step_ms(pipeline, past, args.context_steps))
    measured = {p: statistics.median(v) for p, v in rounds.items()}
    read = {p: sum(step_bytes(pipeline, p).values()) for p in pasts}
    first, last = pasts[0], pasts[-1]
    return {
        "ms_per_token": measured,
        "bytes_per_token": read,
        f"ratio_{last}_over_{first}": measured[last] / measured[first],
        "ratio_4096_over_128": measured[last] / measured[first],  # last: 4096 or the clamp
        "predicted_ratio": read[last] / read[first],
    }
