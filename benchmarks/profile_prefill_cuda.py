"""Where a CrossLMM LLM prefill spends its time on a GPU: kernels against launches.

    python3 -m crosslmm_edge.benchmarks.profile_prefill_cuda [--frames 32] [--preset crosslmm-2b]

Runs the ``prefill-cuda`` suite's CrossLMM layout (fused DCAL attention) under
``torch.profiler`` and prints the wall time of the LLM prefill, the summed GPU
kernel time, the number of kernels, and the largest kernels. A wall time far
above the kernel time means the step is bound by launching kernels from Python,
not by the GPU's arithmetic or memory; the same prefill replayed from a captured
CUDA graph shows what is left without the launches. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ..export.checkpoints.random_model import preset_config
from ..export.reference.attention import sdpa_attention
from ..export.reference.model import build_model
from .suite_prefill_cuda import (
    PROMPT_TOKENS,
    crosslmm_prefill,
    vision_features,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--preset", default="crosslmm-2b")
    args = parser.parse_args()
    config = preset_config(args.preset, num_frames=args.frames)
    with torch.device("cuda"):
        model = build_model(config, cross_attention=sdpa_attention).to(torch.bfloat16)
    size = config.vision_config.image_size
    pixels = torch.randn(args.frames, 3, size, size, device="cuda", dtype=torch.bfloat16)
    prompt = torch.randint(4, 1000, (1, PROMPT_TOKENS), device="cuda")
    with torch.no_grad():
        video = model.pool_and_project(vision_features(model, pixels))
        length = prompt.shape[1] + video.visual_embeds.shape[1]
        prefill = crosslmm_prefill(model, prompt, video)
        for _ in range(3):  # warm-up: kernels chosen, memory pooled
            prefill()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            prefill()
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        replay = _graph_replay_ms(prefill)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e3  # microseconds -> ms
    print(
        f"{args.preset}, {args.frames} frames, {length} positions: LLM prefill {wall * 1e3:.1f} ms "
        f"wall (under the profiler), {busy:.1f} ms of GPU kernels, {len(kernels)} kernels"
    )
    print(f"the same prefill captured in a CUDA graph: {replay:.1f} ms per replay (median of 10)")
    full = _full_token_llm_ms(config, model, pixels, prompt)
    print(
        f"full-token layout (729/frame, transformers SDPA), LLM prefill: {full:.1f} ms "
        f"(median of 3); graph replay over it: {replay / full:.3f}"
    )
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=8)
    print(table)
    return 0


def _full_token_llm_ms(config, model, pixels, prompt) -> float:
    """Median ms of the full-token layout's LLM prefill (the suite's baseline), eager."""
    import transformers

    from .peers import qwen2_config
    from .suite_prefill_cuda import token_layout

    with torch.device("cuda"):
        peer = transformers.Qwen2ForCausalLM(qwen2_config(config.text_config, "sdpa"))
    # functools.wraps on PreTrainedModel.to hides the bound self from mypy.
    peer = peer.to(torch.bfloat16).eval()  # type: ignore[arg-type]
    layout = token_layout(None)
    with torch.no_grad():
        runs = [layout(model, peer, pixels, prompt)["llm"] for _ in range(4)][1:]
    return sorted(runs)[1] * 1e3


def _graph_replay_ms(step) -> float:
    """Median ms of replaying ``step`` captured in a CUDA graph (no Python, no launches)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up on the capture stream, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(10):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


if __name__ == "__main__":
    raise SystemExit(main())
