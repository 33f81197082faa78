"""Our runtime driven directly through its ``Pipeline``, with the time spent inside ONNX
Runtime counted apart from the Python around it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..runtime.backends.base import DeviceArray
from ..runtime.backends.ort_backend import OrtSession
from ..runtime.inference.pipeline import Pipeline
from ..runtime.inference.sampling import Sampler
from ..runtime.model.contract import LLM, ModelDims


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


def open_pipeline(
    package: Path,
    threads: int,
    precision: str | None = None,
    provider: str = "cpu",
    huge_pages: bool | None = None,
) -> Pipeline:
    """A pipeline (CPU unless ``provider`` says) whose LLM session's backend time is measured;
    ``huge_pages``: as ``Pipeline`` takes it (None: the runtime's choice)."""
    pipeline = Pipeline(
        package, provider=provider, precision=precision, threads=threads, huge_pages=huge_pages
    )
    llm = _ort_llm(pipeline)
    llm.session = TimedSession(llm.session)
    return pipeline


def _ort_llm(pipeline: Pipeline) -> OrtSession:
    """The LLM graph's ONNX Runtime session (these benchmarks run ORT on the CPU)."""
    llm = pipeline.sessions[LLM]
    if not isinstance(llm, OrtSession):
        raise TypeError(f"the LLM runs in {type(llm).__name__}, not an ONNX Runtime session")
    return llm


VIDEO_PREFIX_IDS = [1, 2, 3, 4]  # the text tokens before the video in ``video_cache``


def prefix_length(dims: ModelDims, frames: int = 1) -> int:
    """Positions ``video_cache`` fills: its text tokens and ``frames`` frames of visual tokens."""
    return len(VIDEO_PREFIX_IDS) + frames * dims.tokens_per_frame


def video_cache(pipeline: Pipeline, frames: int, capacity: int, seed: int = 0):
    """A KV cache holding a prefilled ``prefix_length(dims, frames)``-position video
    prefix (``VIDEO_PREFIX_IDS``, then the frames), and T2V feeds."""
    size = pipeline.dims.image_size
    pixels = np.random.default_rng(seed).standard_normal((frames, 3, size, size), np.float32)
    _, embeds, cross = pipeline.encode([pixels.astype(pipeline.shapes.dtype)])
    cache = pipeline.new_cache(capacity)
    pipeline.prefill(cache, VIDEO_PREFIX_IDS, embeds, cross)
    empty = pipeline.shapes.no_memory()
    text: dict[str, np.ndarray | DeviceArray] = {n: empty for n in cross if n.startswith("v2v")}
    text |= pipeline.upload_memory({n: v for n, v in cross.items() if n.startswith("t2v")})
    return cache, text


def decode_run(pipeline: Pipeline, prompt: list[int], new_tokens: int, frames: int = 1) -> dict:
    """TTFT, decode tokens/s and per-step time outside ONNX Runtime for one greedy run."""
    capacity = prefix_length(pipeline.dims, frames) + len(prompt) + new_tokens + 1
    cache, text = video_cache(pipeline, frames, capacity)
    stamps = [time.perf_counter()]
    for _ in pipeline.generate(cache, text, prompt, Sampler(), new_tokens, [], False):
        stamps.append(time.perf_counter())
    decode_s = stamps[-1] - stamps[1]
    return {"ttft_s": stamps[1] - stamps[0], "tok_s": (new_tokens - 1) / decode_s}


def python_ms_per_step(pipeline: Pipeline, steps: int = 64, past: int = 64) -> float:
    """Milliseconds per decode step spent outside ``run_with_iobinding``."""
    cache, text = video_cache(pipeline, 1, prefix_length(pipeline.dims) + past + steps + 2)
    timed = _ort_llm(pipeline).session  # the TimedSession of open_pipeline
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


# A separate program (python -c): its imports are absolute.
DECODE_CHILD = """
import json, sys
from crosslmm_edge.benchmarks.ours import decode_run, open_pipeline
package, threads, provider, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pipeline = open_pipeline(package, threads, precision or None, provider, json.loads(sys.argv[7]))
prompt, new = json.loads(sys.argv[5]), int(sys.argv[6])
decode_run(pipeline, prompt, 4)  # warm
print(json.dumps(decode_run(pipeline, prompt, new)))
"""


def ours_decode_child(
    package: Path,
    threads: int,
    prompt: list[int],
    new: int,
    provider: str = "cpu",
    precision: str | None = None,
    huge_pages: bool | None = None,
) -> dict:
    """``decode_run`` in a fresh process (no torch loaded there)."""
    args = [sys.executable, "-c", DECODE_CHILD, str(package), str(threads), provider]
    args += [precision or "", json.dumps(prompt), str(new), json.dumps(huge_pages)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ours on {provider}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
