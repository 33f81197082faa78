"""Suite ``context``: decode time per token as the cache grows, against the bytes it reads."""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..runtime.inference.sampling import Sampler
from ..runtime.package.manifest import load_manifest
from .models import BenchModel
from .ours import open_pipeline, prefix_length, video_cache
from .suite_decode import step_bytes

PASTS = (128, 512, 1024, 2048, 4096)


def filled_cache(pipeline, past: int, steps: int, frames: int = 1):
    """A cache of ``past`` positions (a ``frames``-frame video prefix, then random K/V) with
    room for ``steps`` more, its T2V feeds, and the logits of one first step."""
    prefix = prefix_length(pipeline.dims, frames)
    if past < prefix:
        raise ValueError(f"past {past} is shorter than the {frames}-frame prefix ({prefix})")
    cache, text = video_cache(pipeline, frames, past + steps + 2)
    rng = np.random.default_rng(0)
    positions = (slice(None),) * (2 if cache.head_major else 1) + (slice(prefix, past),)
    for buffer in (*cache.keys, *cache.values):  # content is irrelevant to the time
        rows = buffer.numpy()[positions]  # the positions axis of either layout
        rows[...] = rng.standard_normal(rows.shape).astype(rows.dtype)
    cache.advance(past - prefix)
    logits = pipeline.prefill(cache, [5], pipeline.shapes.no_visual(), text)
    return cache, text, logits


def decode_steps(pipeline, cache, text, logits, steps: int) -> list[float]:
    """Seconds of each of ``steps`` greedy decode steps."""
    no_visual, sampler, times = pipeline.shapes.no_visual(), Sampler(), []
    for _ in range(steps):
        token, _ = sampler.choose(logits, False)
        start = time.perf_counter()
        logits = pipeline.prefill(cache, [token], no_visual, text)
        times.append(time.perf_counter() - start)
    return times


def step_ms(pipeline, past: int, steps: int, frames: int = 1) -> float:
    """Median ms of ``steps`` decode steps after ``past`` cached positions (random K/V)
    behind a ``frames``-frame video (its T2V memory)."""
    cache, text, logits = filled_cache(pipeline, past, steps, frames)
    return statistics.median(decode_steps(pipeline, cache, text, logits, steps)) * 1000


def run_context(model: BenchModel, args, machine: dict) -> dict:
    """Per-token decode time at each past length, for every ONNX precision the package
    holds (interleaved over precisions and past lengths); measured against the bytes."""
    held = [p for p in load_manifest(model.package).labels() if p.startswith("onnx/")]
    pipelines = {
        label.removeprefix("onnx/"): open_pipeline(model.package, args.threads, label[5:])
        for label in held
    }
    first_pipeline = next(iter(pipelines.values()))
    room = first_pipeline.package.max_context - args.context_steps - 2  # last may be clamped
    pasts = sorted({min(p, room) for p in PASTS})
    rounds: dict[tuple[str, int], list[float]] = {(n, p): [] for n in pipelines for p in pasts}
    for _ in range(args.repeats):
        for past in pasts:
            for name, pipeline in pipelines.items():
                rounds[name, past].append(step_ms(pipeline, past, args.context_steps))
    bandwidth = machine["bandwidth_gbs"] * 1e9
    return {
        name: context_report(
            {p: statistics.median(rounds[name, p]) for p in pasts},
            {p: sum(step_bytes(pipeline, p).values()) for p in pasts},
            bandwidth,
        )
        for name, pipeline in pipelines.items()
    }


def context_report(ms: dict[int, float], read: dict[int, int], bandwidth: float) -> dict:
    """Measured and byte-predicted growth from the shortest to the longest past.

    ``kv_read_gbs``: the extra bytes of the longest past over its extra time, the
    speed the growing KV cache is actually read at (the probe's bandwidth if ideal).
    """
    first, last = min(ms), max(ms)
    extra_bytes, extra_s = read[last] - read[first], (ms[last] - ms[first]) / 1000
    measured, predicted = ms[last] / ms[first], read[last] / read[first]
    return {
        "ms_per_token": ms,
        "bytes_per_token": read,
        "limit_ms_per_token": {p: b / bandwidth * 1000 for p, b in read.items()},
        f"ratio_{last}_over_{first}": measured,
        "predicted_ratio": predicted,
        "ratio_over_prediction": measured / predicted,
        "last_over_limit": ms[last] / (read[last] / bandwidth * 1000),
        "kv_read_gbs": extra_bytes / extra_s / 1e9 if extra_s > 0 else None,
    }
