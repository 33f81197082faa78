"""Suites ``decode`` and ``roofline``: tokens/s against the peers and the bandwidth limit.

The limit: a decode step reads every LLM weight once, plus the KV cache and
the T2V memory of every DCAL; divided by the measured read bandwidth that is
the fastest a bandwidth-bound step can be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.model.contract import LLM
from .graph_bytes import weight_bytes_per_step
from .models import BenchModel
from .ours import (
    decode_run,
    open_pipeline,
    ours_decode_child,
    prefix_length,
    python_ms_per_step,
)
from .peers import (
    optimum_decode,
    qwen2_from_checkpoint,
    random_prompt,
    transformers_decode,
)
from .timing import interleaved

T2V_KEY = "t2v_key.0"  # the first DCAL's text-to-video memory (``contract.cross_names``)


def step_bytes(pipeline, past: int, frames: int = 1) -> dict[str, int]:
    """Bytes a decode step reads at ``past`` cached positions: weights, KV, cross K/V."""
    llm_file = pipeline.package.path(pipeline.artifacts.by_role["llm"], verify=False)
    weights = weight_bytes_per_step(llm_file)["read"]  # a Gather-only table: one row
    cross_dtype = pipeline.sessions[LLM].inputs[T2V_KEY].dtype  # INT8 in quantized packages
    memory = cache_bytes(pipeline.dims, past, pipeline.kv_dtype, cross_dtype, frames)
    return {"weights": weights, **memory}


def cache_bytes(dims, past: int, kv_dtype, cross_dtype, frames: int = 1) -> dict[str, int]:
    """Bytes of the self-attention KV (``past`` positions) and the DCALs' T2V K/V one step reads."""
    row = dims.num_kv_heads * dims.head_dim
    kv = 2 * dims.num_layers * past * row * np.dtype(kv_dtype).itemsize
    cross = 2 * dims.num_dcal * frames * dims.patches_per_frame * row
    return {"kv": kv, "cross": cross * np.dtype(cross_dtype).itemsize}


def run_decode(model: BenchModel, args, machine: dict) -> dict:
    """Ours vs transformers eager and SDPA (and optimum when ``--optimum-python`` is given),
    on ``--provider``'s device; ``--precision fp16`` runs transformers in float16 too."""
    import torch

    torch.set_num_threads(args.threads)
    provider, precision = args.provider, args.precision
    pipeline = open_pipeline(model.package, args.threads, precision)  # sizes only: CPU is enough
    prompt = random_prompt(args.prompt_tokens, pipeline.dims.vocab_size)
    new = args.new_tokens
    # Ours runs in its own process like optimum: torch's OpenMP threads, idle but
    # spinning after each transformers step, would otherwise take its cores.
    runs = {
        "ours": lambda: ours_decode_child(
            model.package, args.threads, prompt, new, provider, precision
        )
    }
    device = "cuda" if provider == "cuda" else "cpu"
    dtype = torch.float16 if precision == "fp16" else torch.float32
    for attention in ("eager", "sdpa"):
        hf = qwen2_from_checkpoint(model.checkpoint, attention).to(device, dtype)
        runs[f"transformers_{attention}"] = (lambda m: lambda: transformers_decode(m, prompt, new))(
            hf
        )
    if args.optimum_python and args.optimum_model:
        for binding in (False, True):
            runs[f"optimum_iobinding_{'on' if binding else 'off'}"] = (
                lambda b: (
                    lambda: optimum_decode(
                        args.optimum_python, Path(args.optimum_model), b, args.threads, prompt, new
                    )
                )
            )(binding)
    medians = interleaved(runs, args.repeats)
    past = prefix_length(pipeline.dims) + len(prompt) + new // 2
    read = sum(step_bytes(pipeline, past).values())
    limit_tok_s = machine["bandwidth_gbs"] * 1e9 / read
    out: dict[str, object] = {name: figures for name, figures in medians.items()}
    out["ours_tok_s"] = medians["ours"]["tok_s"]
    out["transformers_sdpa_tok_s"] = medians["transformers_sdpa"]["tok_s"]
    out["transformers_eager_tok_s"] = medians["transformers_eager"]["tok_s"]
    out["ours_over_transformers_sdpa"] = (
        medians["ours"]["tok_s"] / medians["transformers_sdpa"]["tok_s"]
    )
    optimum = [v["tok_s"] for k, v in medians.items() if k.startswith("optimum")]
    out["optimum_tok_s"] = max(optimum) if optimum else None
    out["bytes_per_step"] = read
    out["bandwidth_limit_tok_s"] = limit_tok_s
    out["bandwidth_fraction"] = medians["ours"]["tok_s"] / limit_tok_s
    out["settings"] = {
        "threads": args.threads,
        "prompt": len(prompt),
        "new_tokens": new,
        "provider": provider,
        "precision": pipeline.artifacts.label,
        "transformers": f"{device} {str(dtype).removeprefix('torch.')}",
    }
    return out


def run_roofline(model: BenchModel, embedded: Path, args, machine: dict) -> dict:
    """Bytes per step over bandwidth vs our step time; Python time outside ONNX Runtime."""
    pipeline = open_pipeline(model.package, args.threads)
    bytes_ = step_bytes(pipeline, past=128)
    big = python_ms_per_step(pipeline, steps=16)
    step = decode_run(pipeline, random_prompt(16, pipeline.dims.vocab_size), 17)
    small = open_pipeline(embedded, args.threads)
    return {
        "bytes_per_step": bytes_,
        "limit_ms_per_step": sum(bytes_.values()) / (machine["bandwidth_gbs"] * 1e9) * 1000,
        "ours_ms_per_step": 1000 / step["tok_s"],
        "python_ms_per_step": python_ms_per_step(small, steps=200),
        "python_ms_per_step_large": big,
        "python_share_large": big / (1000 / step["tok_s"]),
    }
