"""Suite ``prefill-cuda``: the paper's figure-4 comparison on a GPU, in PyTorch.

Our ONNX graphs need onnxruntime-gpu or TensorRT on a GPU, and the GPU
machines this project was lent have neither; so this suite measures the
architecture itself: the PyTorch reference CrossLMM (``export/reference/model.py``)
against the same-width LLM fed every frame's tokens through transformers'
SDPA (flash/memory-efficient kernels), random weights, bf16. Per frame count:

- ``crosslmm``: SigLIP -> 3x3 pooled tokens + projector -> the LLM with DCAL
  over the un-pooled 729-token memory (our reference attention materialises
  its scores: the comparison does not flatter CrossLMM);
- ``llava_ov``: SigLIP -> 14x14 bilinear pooling (196 tokens per frame,
  LLaVA-OneVision's layout, the paper's baseline) -> projector -> Qwen2 SDPA;
- ``full``: SigLIP -> all 729 tokens per frame -> projector -> Qwen2 SDPA.

Both run SigLIP on 8 frames at a time and a 16-token prompt, and build the KV
cache (``use_cache``). Timed from pixels on the GPU to the last position's
logits (the vision tower included, as in the paper's figure) and the LLM part
alone; memory is the peak allocated during a run minus what was allocated
before (activations and cache), and that plus the layout's own weights.
On a machine without CUDA it runs on the CPU in fp32 (only to check the code).
"""

from __future__ import annotations

import time
from statistics import median

VISION_CHUNK = 8
PROMPT_TOKENS = 16
LLAVA_OV_GRID = 14


def run_prefill_cuda(args) -> dict:
    """Per frame count and layout: times, memory, and CrossLMM's ratios to the others."""
    import torch
    import transformers

    from ..export.checkpoints.random_model import preset_config
    from ..export.reference.attention import full_attention, sdpa_attention
    from ..export.reference.model import build_model
    from .peers import qwen2_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = preset_config(args.cuda_preset, num_frames=max(args.prefill_frames))
    with torch.device(device):
        model = build_model(config).to(dtype)
        peer = transformers.Qwen2ForCausalLM(qwen2_config(config.text_config, "sdpa"))
        # functools.wraps on PreTrainedModel.to hides the bound self from mypy.
        peer = peer.to(dtype).eval()  # type: ignore[arg-type]
    layouts = {
        "crosslmm": _crosslmm(full_attention),
        "crosslmm_sdpa": _crosslmm(sdpa_attention),
        "llava_ov": token_layout(LLAVA_OV_GRID),
        "full": token_layout(None),
    }
    own = _param_bytes(model.vision_model, model.projector)
    weights = {
        "crosslmm": _param_bytes(model),
        "crosslmm_sdpa": _param_bytes(model),
        "llava_ov": own + _param_bytes(peer),
        "full": own + _param_bytes(peer),
    }
    out: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "preset": args.cuda_preset,
        "dtype": str(dtype).removeprefix("torch."),
        "weights_mb": {k: v / 2**20 for k, v in weights.items()},
        "points": {},
    }
    size = config.vision_config.image_size
    for frames in args.prefill_frames:
        pixels = torch.randn(frames, 3, size, size, device=device, dtype=dtype)
        prompt = torch.randint(4, 1000, (1, PROMPT_TOKENS), device=device)
        point = {}
        for name, layout in layouts.items():
            try:
                point[name] = _measure(layout, (model, peer, pixels, prompt), args.repeats)
            except torch.OutOfMemoryError:
                point[name] = {"error": "out of memory"}
                torch.cuda.empty_cache()
                continue
            point[name]["with_weights_mb"] = point[name]["added_mb"] + weights[name] / 2**20
        out["points"][frames] = point
        out.update(_ratios(frames, point))
        print(f"  {frames} frames: {point}", flush=True)
    return out


def _measure(layout, inputs: tuple, repeats: int) -> dict:
    """Median times over ``repeats`` runs after one warm-up, and the peak added memory."""
    import torch

    cuda = torch.cuda.is_available()
    runs = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
            before = torch.cuda.memory_allocated() if cuda else 0
            spans = layout(*inputs)  # each span resets the peak: keep the larger
            runs.append({**spans, "added": max(spans["vision_peak"], spans["llm_peak"]) - before})
    runs = runs[1:]
    vision, llm = (median(r[k] for r in runs) for k in ("vision", "llm"))
    return {
        "vision_ms": vision * 1e3,
        "llm_ms": llm * 1e3,
        "total_ms": (vision + llm) * 1e3,
        "added_mb": max(r["added"] for r in runs) / 2**20,
        "llm_added_mb": max(r["llm_added"] for r in runs) / 2**20,
    }


def _ratios(frames: int, point: dict) -> dict:
    """``cross_over_*``: the exported attention; ``cross_sdpa_over_*``: fused kernels."""
    ratios: dict = {}
    for mine, prefix in (("crosslmm", "cross"), ("crosslmm_sdpa", "cross_sdpa")):
        for other in ("llava_ov", "full"):
            ours, theirs = point[mine], point[other]
            if "error" in ours or "error" in theirs:
                continue
            for metric in ("total_ms", "llm_ms", "with_weights_mb", "added_mb", "llm_added_mb"):
                name = metric.removesuffix("_ms").removesuffix("_mb")
                if theirs[metric]:
                    ratios[f"{prefix}_over_{other}_{name}_{frames}"] = ours[metric] / theirs[metric]
    return ratios


def _timed(step, spans: dict, name: str):
    """Run ``step``, the GPU's queue drained; note its seconds and peak added bytes."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    start = time.perf_counter()
    result = step()
    if cuda:
        torch.cuda.synchronize()
    spans[name] = time.perf_counter() - start
    spans[f"{name}_peak"] = torch.cuda.max_memory_allocated() if cuda else 0
    spans[f"{name}_added"] = spans[f"{name}_peak"] - before  # over what the step started with
    return result


def vision_features(model, pixels):
    """SigLIP features [F, N, Dv] of every frame, ``VISION_CHUNK`` frames at a time."""
    import torch

    return torch.cat([model.vision_model(chunk) for chunk in pixels.split(VISION_CHUNK)])


def _crosslmm(attend):
    """CrossLMM with ``attend`` as the DCAL attention kernel."""

    def run(model, peer, pixels, prompt) -> dict:
        from ..export.reference.dcal import CrossAttention

        for module in model.modules():
            if isinstance(module, CrossAttention):
                module.attend = attend  # the injected part (see export/reference/dcal.py)
        spans: dict = {}
        video = _timed(
            lambda: model.pool_and_project(vision_features(model, pixels)), spans, "vision"
        )
        _timed(crosslmm_prefill(model, prompt, video), spans, "llm")
        return spans

    return run


def crosslmm_prefill(model, prompt, video):
    """The LLM prefill of ``[prompt ; the video's visual tokens]`` into an empty cache,
    as a callable (timed here, profiled and graph-captured by ``profile_prefill_cuda``)."""
    import torch

    length = prompt.shape[1] + video.visual_embeds.shape[1]
    positions = torch.arange(length, device=prompt.device)[None]  # [1, S+Nv]

    def llm():
        past = model.empty_past()
        return model(prompt, video.visual_embeds, positions, past, video.cross, last_only=True)

    return llm


def token_layout(grid: int | None):
    """The full-token layout: every (or ``grid``² pooled) token per frame in the sequence."""

    def run(model, peer, pixels, prompt) -> dict:
        import torch

        from ..export.reference.projector import pool_tokens

        def vision():
            features = vision_features(model, pixels)  # [F, 729, Dv]
            if grid is not None:
                features = pool_tokens(features, grid, "bilinear")  # [F, grid², Dv]
            return model.projector(features).reshape(1, -1, peer.config.hidden_size)

        spans: dict = {}
        embeds = _timed(vision, spans, "vision")

        def llm():
            sequence = torch.cat([peer.model.embed_tokens(prompt), embeds], dim=1)
            return peer(inputs_embeds=sequence, use_cache=True, logits_to_keep=1)

        _timed(llm, spans, "llm")
        return spans

    return run


def _param_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
