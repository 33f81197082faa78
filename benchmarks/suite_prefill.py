"""Suite ``prefill``: CrossLMM (P tokens per frame + DCAL) against the same LLM fed every
patch token of every frame, through our graphs and through transformers' SDPA.

Each point runs in a fresh process; a thread samples its resident memory
during the prefill (the peak while loading the weights is not the prefill's).
With ``--provider cuda`` both sides run on the GPU in ``--precision``'s dtype,
each prefill twice in a row (the second is timed: the first loads kernels and
grows allocators), and memory is the device memory in use, sampled.
The LLM prefill alone is timed and measured (for CrossLMM the vision tower
and pooling run before it; the full-token layout would need the tower too).
``full_ours`` prefills in pieces bounded by the score budget
(``Pipeline.max_score_bytes``); ``full_ours_512`` with fixed 512-position
pieces, as before that budget existed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .models import BenchModel

# A separate program (python -c): its imports are absolute.
CHILD = """
import json, os, sys, threading, time
import numpy as np
kind, package, checkpoint, frames, threads, provider, precision = sys.argv[1:8]
frames, threads = int(frames), int(threads)
runs = 2 if provider == "cuda" else 1  # GPU: time the second (first-use loads and allocations)
page = os.sysconf("SC_PAGE_SIZE")
device_used = lambda: 0
if provider == "cuda":  # device memory in use (ORT's arena and torch's cache keep their peak)
    try:
        from crosslmm_edge.runtime.backends.cuda_runtime import open_cuda_runtime
        cuda = open_cuda_runtime()
        device_used = lambda: (lambda free, total: total - free)(*cuda.memory_info())
    except Exception as exc:  # no CUDA runtime binding: time only (memory stays 0)
        print(f"no device memory figures: {exc}", file=sys.stderr)
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * page
class Sampler(threading.Thread):  # the load-time peak is not the prefill's: sample during it
    def __init__(self):
        super().__init__(daemon=True); self.peak, self.running = rss(), True
        self.device_peak = device_used()
    def run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            self.device_peak = max(self.device_peak, device_used())
            time.sleep(0.005)
if kind == "full_sdpa":
    import torch
    from crosslmm_edge.benchmarks.peers import qwen2_from_checkpoint
    torch.set_num_threads(threads)
    device = "cuda" if provider == "cuda" else "cpu"
    dtype = torch.float16 if precision == "fp16" else torch.float32
    drain = torch.cuda.synchronize if device == "cuda" else lambda: None
    model = qwen2_from_checkpoint(__import__("pathlib").Path(checkpoint), "sdpa").to(device, dtype)
    n = json.load(open(checkpoint + "/config.json"))["vision_config"]
    tokens = frames * (n["image_size"] // n["patch_size"]) ** 2
    embeds = torch.randn(1, tokens, model.config.hidden_size, device=device, dtype=dtype) * 0.02
    with torch.no_grad():
        model(inputs_embeds=embeds[:, :8], use_cache=True, logits_to_keep=1)  # touch the weights
        drain(); base, base_device, sampler = rss(), device_used(), Sampler(); sampler.start()
        for _ in range(runs):
            start = time.perf_counter()
            model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
            drain(); seconds = time.perf_counter() - start
else:
    from crosslmm_edge.benchmarks.ours import open_pipeline
    pipeline = open_pipeline(package, threads, precision or None, provider)
    d = pipeline.dims
    rng = np.random.default_rng(0)
    if kind == "crosslmm_ours":
        pixels = rng.standard_normal((frames, 3, d.image_size, d.image_size), np.float32)
        _, embeds, cross = pipeline.encode([pixels.astype(pipeline.shapes.dtype)])
    else:  # full_ours*: every patch token in the sequence, no cross memory
        if kind == "full_ours_512":  # before the score budget: fixed 512-position pieces
            pipeline.max_score_bytes = 1 << 62
        embeds = (rng.standard_normal((1, frames * d.patches_per_frame, d.hidden_size)) * 0.02)
        embeds = embeds.astype(pipeline.shapes.dtype)
        empty = pipeline.shapes.no_memory()
        cross = {n: empty for n in pipeline.sessions["llm"].inputs if "2v_" in n}
    base, base_device, sampler = rss(), device_used(), Sampler(); sampler.start()
    for _ in range(runs):
        cache = pipeline.new_cache(embeds.shape[1] + 8)
        start = time.perf_counter()
        pipeline.prefill(cache, [1, 2, 3, 4], embeds, cross)  # the logits come back to the host
        seconds = time.perf_counter() - start
sampler.running = False; sampler.join()
print(json.dumps({"seconds": seconds, "peak_rss": sampler.peak, "rss_before": base,
                  "device_peak": sampler.device_peak, "device_before": base_device}))
"""

CPU_KINDS = ("crosslmm_ours", "full_ours", "full_ours_512", "full_sdpa")
CUDA_KINDS = ("crosslmm_ours", "full_ours", "full_sdpa")  # 512-position pieces: a CPU story
RATIOS = (  # (layout, name of its ratios to full_sdpa)
    ("crosslmm_ours", "cross_over_full"),
    ("full_ours", "ours_full_over_sdpa"),
    ("full_ours_512", "ours_full_512_over_sdpa"),
)


def _point(kind: str, model: BenchModel, frames: int, args) -> dict:
    argv = [sys.executable, "-c", CHILD, kind, str(model.package), str(model.checkpoint)]
    argv += [str(frames), str(args.threads), args.provider, args.precision or ""]
    done = subprocess.run(
        argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_prefill(model: BenchModel, args) -> dict:
    """Time and peak memory per layout and frame count, and the CrossLMM/full ratios
    (on ``--provider cuda``: device memory in use, sampled, instead of the RSS)."""
    kinds = CUDA_KINDS if args.provider == "cuda" else CPU_KINDS
    points: dict[str, dict[int, dict]] = {kind: {} for kind in kinds}
    for frames in args.prefill_frames:
        for kind in kinds:
            points[kind][frames] = _point(kind, model, frames, args)
    out: dict = {"points": points, "memory": "device" if args.provider == "cuda" else "rss"}
    peak, added = (_device_peak, _device_added) if args.provider == "cuda" else (_rss_peak, _added)
    for frames in args.prefill_frames:
        full = points["full_sdpa"][frames]
        for mine, name in RATIOS:
            ours = points.get(mine, {}).get(frames, {})
            if "seconds" not in ours or "seconds" not in full:
                continue
            out[f"{name}_time_{frames}"] = ours["seconds"] / full["seconds"]
            if peak(ours) and peak(full):  # 0: not measured
                out[f"{name}_mem_{frames}"] = peak(ours) / peak(full)
                out[f"{name}_added_mem_{frames}"] = added(ours) / added(full)
    return out


def _rss_peak(point: dict) -> int:
    return point["peak_rss"]


def _device_peak(point: dict) -> int:
    return point["device_peak"]


def _device_added(point: dict) -> int:
    """Device bytes the prefill added to what was in use just before."""
    return max(point["device_peak"] - point["device_before"], 1)


def _added(point: dict) -> int:
    """Bytes the prefill added to the resident set (peak during it minus just before)."""
    return max(point["peak_rss"] - point["rss_before"], 1)
