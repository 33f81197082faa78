"""Suite ``int8``: per-graph latency of the INT8 artifacts against the FP32 ones."""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..runtime.model.contract import POOLING, VISION_ENCODER
from ..runtime.package.manifest import load_manifest
from .models import BenchModel
from .ours import open_pipeline, prefix_length, video_cache

FRAMES = 8


def _graph_ms(pipeline, repeats: int) -> dict[str, float]:
    """Median ms of the vision encoder and pooling on 8 frames, and of one decode step."""
    d = pipeline.dims
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((FRAMES, 3, d.image_size, d.image_size)).astype(np.float32)
    features = pipeline.sessions[VISION_ENCODER].run({"pixel_values": pixels})["patch_features"]
    cache, text = video_cache(pipeline, 1, prefix_length(pipeline.dims) + 130 + repeats)
    pipeline.prefill(cache, [5] * 128, pipeline.shapes.no_visual(), text)
    runs = {
        "vision_encoder": lambda: pipeline.sessions[VISION_ENCODER].run({"pixel_values": pixels}),
        "pooling": lambda: pipeline.sessions[POOLING].run({"patch_features": features}),
        "llm_decode_step": lambda: pipeline.prefill(cache, [7], pipeline.shapes.no_visual(), text),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) * 1000 for name, v in times.items()}


def run_int8(model: BenchModel, args) -> dict:
    """fp32 and int8 side by side (interleaved per graph), or why not."""
    held = load_manifest(model.package).labels()
    if "onnx/int8" not in held:
        return {"skipped": f"{model.package} holds no onnx/int8 artifacts ({held}); quantize first"}
    fp32 = open_pipeline(model.package, args.threads, "fp32")
    int8 = open_pipeline(model.package, args.threads, "int8")
    ms = {"fp32": _graph_ms(fp32, args.repeats * 3), "int8": _graph_ms(int8, args.repeats * 3)}
    ratios = {name: ms["int8"][name] / ms["fp32"][name] for name in ms["fp32"]}
    return {"ms": ms, "int8_over_fp32": ratios}
