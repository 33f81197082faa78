"""Suite ``prefill``: CrossLMM (P tokens per frame + DCAL) against the same LLM fed every
patch token of every frame, through our graphs and through transformers' SDPA.

Each point runs in a fresh process; a thread samples its resident memory
during the prefill (the peak while loading the weights is not the prefill's).
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

CHILD = """
import json, os, sys, threading, time
import numpy as np
kind, package, checkpoint, frames, threads = sys.argv[1:6]
frames, threads = int(frames), int(threads)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * page
class Sampler(threading.Thread):  # the load-time peak is not the prefill's: sample during it
    def __init__(self):
        super().__init__(daemon=True); self.peak, self.running = rss(), True
    def run(self):
        while self.running:
            self.peak = max(self.peak, rss()); time.sleep(0.005)
if kind == "full_sdpa":
    import torch
    from crosslmm_edge.benchmarks.peers import qwen2_from_checkpoint
    torch.set_num_threads(threads)
    model = qwen2_from_checkpoint(__import__("pathlib").Path(checkpoint), "sdpa")
    n = json.load(open(checkpoint + "/config.json"))["vision_config"]
    tokens = frames * (n["image_size"] // n["patch_size"]) ** 2
    embeds = torch.randn(1, tokens, model.config.hidden_size) * 0.02
    with torch.no_grad():
        model(inputs_embeds=embeds[:, :8], use_cache=True, logits_to_keep=1)  # touch the weights
        base, sampler = rss(), Sampler(); sampler.start()
        start = time.perf_counter()
        model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        seconds = time.perf_counter() - start
else:
    from crosslmm_edge.benchmarks.ours import open_pipeline
    pipeline = open_pipeline(package, threads)
    d = pipeline.dims
    rng = np.random.default_rng(0)
    if kind == "crosslmm_ours":
        pixels = rng.standard_normal((frames, 3, d.image_size, d.image_size), np.float32)
        _, embeds, cross = pipeline.encode([pixels])
    else:  # full_ours*: every patch token in the sequence, no cross memory
        if kind == "full_ours_512":  # before the score budget: fixed 512-position pieces
            pipeline.max_score_bytes = 1 << 62
        embeds = (rng.standard_normal((1, frames * d.patches_per_frame, d.hidden_size)) * 0.02)
        embeds = embeds.astype(np.float32)
        empty = pipeline.shapes.no_memory()
        cross = {n: empty for n in pipeline.sessions["llm"].inputs if "2v_" in n}
    cache = pipeline.new_cache(embeds.shape[1] + 8)
    base, sampler = rss(), Sampler(); sampler.start()
    start = time.perf_counter()
    pipeline.prefill(cache, [1, 2, 3, 4], embeds, cross)
    seconds = time.perf_counter() - start
sampler.running = False; sampler.join()
print(json.dumps({"seconds": seconds, "peak_rss": sampler.peak, "rss_before": base}))
"""


def _point(kind: str, model: BenchModel, frames: int, threads: int) -> dict:
    args = [sys.executable, "-c", CHILD, kind, str(model.package), str(model.checkpoint)]
    done = subprocess.run(
        [*args, str(frames), str(threads)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_prefill(model: BenchModel, args) -> dict:
    """Time and peak RSS per layout and frame count, and the CrossLMM/full ratios."""
    kinds = ("crosslmm_ours", "full_ours", "full_ours_512", "full_sdpa")
    points: dict[str, dict[int, dict]] = {kind: {} for kind in kinds}
    for frames in args.prefill_frames:
        for kind in kinds:
            points[kind][frames] = _point(kind, model, frames, args.threads)
    out: dict = {"points": points}
    for frames in args.prefill_frames:
        cross, full = points["crosslmm_ours"][frames], points["full_sdpa"][frames]
        ours_full, ours_512 = points["full_ours"][frames], points["full_ours_512"][frames]
        if "seconds" in ours_512 and "seconds" in full:
            out[f"ours_full_512_over_sdpa_time_{frames}"] = ours_512["seconds"] / full["seconds"]
            out[f"ours_full_512_over_sdpa_added_mem_{frames}"] = _added(ours_512) / _added(full)
        if "seconds" in cross and "seconds" in full:
            out[f"cross_over_full_time_{frames}"] = cross["seconds"] / full["seconds"]
            out[f"cross_over_full_mem_{frames}"] = cross["peak_rss"] / full["peak_rss"]
            out[f"cross_over_full_added_mem_{frames}"] = _added(cross) / _added(full)
        if "seconds" in ours_full and "seconds" in full:
            out[f"ours_full_over_sdpa_time_{frames}"] = ours_full["seconds"] / full["seconds"]
            out[f"ours_full_over_sdpa_mem_{frames}"] = ours_full["peak_rss"] / full["peak_rss"]
            out[f"ours_full_over_sdpa_added_mem_{frames}"] = _added(ours_full) / _added(full)
    return out


def _added(point: dict) -> int:
    """Bytes the prefill added to the resident set (peak during it minus just before)."""
    return max(point["peak_rss"] - point["rss_before"], 1)
