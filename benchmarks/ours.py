"""Our runtime driven directly through its ``Pipeline``, with the time spent inside ONNX
Runtime counted apart from the Python around it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..runtime.inference.pipeline import Pipeline
from ..runtime.inference.sampling import Sampler
from ..runtime.model.contract import LLM


class TimedSession:
    """Delegates to an ``onnxruntime.InferenceSession``; sums the seconds in its runs."""

    def __init__(self, session) -> None:
        self._session, self.seconds, self.calls = session, 0.0, 0

    def run_with_iobinding(self, binding, *args) -> None:
        start = time.perf_counter()
        self._session.run_with_iobinding(binding, *args)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def open_pipeline(package: Path, threads: int, precision: str | None = None) -> Pipeline:
    """A CPU pipeline whose LLM session's backend time is measured."""
    pipeline = Pipeline(package, provider="cpu", precision=precision, threads=threads)
    llm = pipeline.sessions[LLM]
    llm.session = TimedSession(llm.session)  # type: ignore[attr-defined]
    return pipeline


def video_cache(pipeline: Pipeline, frames: int, capacity: int, seed: int = 0):
    """A KV cache holding a prefilled 4-token + ``frames``-frame video prefix, and T2V feeds."""
    size = pipeline.dims.image_size
    pixels = np.random.default_rng(seed).standard_normal((frames, 3, size, size), np.float32)
    _, embeds, cross = pipeline.encode([pixels.astype(pipeline.shapes.dtype)])
    cache = pipeline.new_cache(capacity)
    pipeline.prefill(cache, [1, 2, 3, 4], embeds, cross)
    empty = pipeline.shapes.no_memory()
    text = {n: empty if n.startswith("v2v") else pipeline.upload(v) for n, v in cross.items()}
    return cache, text


def decode_run(pipeline: Pipeline, prompt: list[int], new_tokens: int, frames: int = 1) -> dict:
    """TTFT, decode tokens/s and per-step time outside ONNX Runtime for one greedy run."""
    capacity = 4 + frames * pipeline.dims.tokens_per_frame + len(prompt) + new_tokens + 1
    cache, text = video_cache(pipeline, frames, capacity)
    stamps = [time.perf_counter()]
    for _ in pipeline.generate(cache, text, prompt, Sampler(), new_tokens, [], False):
        stamps.append(time.perf_counter())
    decode_s = stamps[-1] - stamps[1]
    return {"ttft_s": stamps[1] - stamps[0], "tok_s": (new_tokens - 1) / decode_s}


def python_ms_per_step(pipeline: Pipeline, steps: int = 64, past: int = 64) -> float:
    """Milliseconds per decode step spent outside ``run_with_iobinding``."""
    cache, text = video_cache(pipeline, 1, 4 + pipeline.dims.tokens_per_frame + past + steps + 2)
    timed = pipeline.sessions[LLM].session  # type: ignore[attr-defined]
    sampler = Sampler()
    no_visual = pipeline.shapes.no_visual()
    prompt = [4 + i % (pipeline.dims.vocab_size - 4) for i in range(past)]  # plain tokens
    logits = pipeline.prefill(cache, prompt, no_visual, text)
    timed.seconds = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        token, _ = sampler.choose(logits, False)
        logits = pipeline.prefill(cache, [token], no_visual, text)
    total = time.perf_counter() - start
    return (total - timed.seconds) / steps * 1000


DECODE_CHILD = """
import json, sys
from crosslmm_edge.benchmarks.ours import decode_run, open_pipeline
pipeline = open_pipeline(sys.argv[1], int(sys.argv[2]), sys.argv[5] or None)
prompt, new = json.loads(sys.argv[3]), int(sys.argv[4])
decode_run(pipeline, prompt, 4)  # warm
print(json.dumps(decode_run(pipeline, prompt, new)))
"""


def ours_decode_child(
    package: Path, threads: int, prompt: list[int], new: int, precision: str | None = None
) -> dict:
    """``decode_run`` in a fresh process (no torch loaded there) at ``precision``
    (None: the runtime's default for the CPU)."""
    args = [sys.executable, "-c", DECODE_CHILD, str(package), str(threads), json.dumps(prompt)]
    args += [str(new), precision or ""]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
