"""Suite ``int4``: our INT4, INT8 and fp32 decode against onnxruntime-genai int4.

Every system runs in its own process, interleaved, on the same weights: ours
at each precision the package holds, and onnxruntime-genai's int4 CPU model
(``--genai-python``: a venv with onnxruntime-genai) built from our
checkpoint's LLM. Each gets tokens/s, ms per step, the bytes a step reads
(``graph_bytes``: weights as the graph reads them, KV, T2V memory) and the
fraction of the bandwidth limit those bytes give. After the rounds, the INT4
decoder's weight products alone (``int4_kernel_rate`` at the package's shape
and block size) give the rate ONNX Runtime's kernel reads those weights at:
they are most of a step's bytes, so a whole step's fraction stays near that
kernel's own.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..runtime.model.contract import LLM, past_names
from ..runtime.package.loader import open_package
from .graph_bytes import weight_bytes_per_step
from .int4_kernel_rate import layer_shapes, rates
from .models import BenchModel
from .ours import ours_decode_child, prefix_length
from .peer_genai import genai_decode, genai_int4_model
from .peers import random_prompt
from .suite_decode import T2V_KEY, cache_bytes
from .timing import interleaved

PRECISIONS = ("int4", "int8", "fp32")  # ours, as the package holds them
GENAI = "genai_int4"


def run_int4(model: BenchModel, args, machine: dict) -> dict:
    """Interleaved decode runs of every system; per-system figures and the headline ratios."""
    package = open_package(model.package, verify=False)
    entry = package.manifest.graphs[LLM]
    held = {p: a for p in PRECISIONS if (a := entry.find("onnx", p)) is not None}
    dims, new = package.dims, args.new_tokens
    prefix = prefix_length(dims)  # ours decodes after a 1-frame video prefix
    prompt = random_prompt(args.prompt_tokens, dims.vocab_size)
    runs = {
        f"ours_{p}": partial(
            ours_decode_child, model.package, args.threads, prompt, new, precision=p
        )
        for p in held
    }
    graphs = {f"ours_{p}": package.path(a, verify=False) for p, a in held.items()}
    genai = _genai_leg(model, args, prefix + len(prompt), dims.vocab_size)
    if genai:
        folder, genai_prompt = genai
        runs[GENAI] = partial(
            genai_decode, args.genai_python, folder, args.threads, genai_prompt, new
        )
        graphs[GENAI] = folder / "model.onnx"
    medians = interleaved(runs, args.repeats)
    past = prefix + len(prompt) + new // 2  # the middle step of the decode
    systems = {}
    for name, graph in graphs.items():
        if name == GENAI:  # its CPU cache is fp32; its LLM has no DCAL, so no T2V memory
            memory = cache_bytes(dims, past, "float32", "float32")["kv"]
        else:  # ours: the artifact's cache type and T2V memory type
            inputs = {t.name: t.dtype for t in held[name[5:]].inputs}
            kv = cache_bytes(dims, past, inputs[past_names(0)[0]], inputs[T2V_KEY])
            memory = kv["kv"] + kv["cross"]
        systems[name] = figures(
            medians[name], weight_bytes_per_step(graph)["read"] + memory, machine
        )
    llm_bytes = {p: _artifact_bytes(package.path(a, verify=False), a) for p, a in held.items()}
    out = summary(systems, llm_bytes)
    if "int4" in held:
        out["int4_weights_alone"] = weights_alone(package, held["int4"], args.threads, machine)
    out["genai"] = str(graphs[GENAI].parent) if genai else "skipped: no --genai-python"
    out["package_bytes"] = sum(f.stat().st_size for f in package.folder.rglob("*") if f.is_file())
    out["settings"] = {"threads": args.threads, "prompt_tokens": len(prompt), "new_tokens": new}
    out["settings"]["past_at_middle_step"] = past
    return out


def figures(median: dict, step_bytes: int, machine: dict) -> dict:
    """tok/s, TTFT, ms per step, bytes per step and the fraction of the bandwidth limit."""
    limit_tok_s = machine["bandwidth_gbs"] * 1e9 / step_bytes
    return {
        "tok_s": median["tok_s"],
        "ttft_s": median["ttft_s"],
        "ms_per_step": 1000 / median["tok_s"],
        "bytes_per_step": step_bytes,
        "limit_tok_s": limit_tok_s,
        "bandwidth_fraction": median["tok_s"] / limit_tok_s,
    }


def weights_alone(package, artifact, threads: int, machine: dict, repeats: int = 5) -> dict:
    """The decoder's INT4 weight products of one decode step alone, streamed (every layer
    its own weights, at M = 1, as ``int4_kernel_rate`` times them) in ``artifact``'s block
    size: GB/s of their bytes and that rate over the probe's."""
    text = package.config.text_config
    shapes = layer_shapes(
        text.hidden_size,
        text.intermediate_size,
        text.num_attention_heads,
        text.num_key_value_heads,
    )
    block_size = int(artifact.build["block_size"])  # every INT4 build records it
    rate = rates(shapes, text.num_hidden_layers, block_size, threads, repeats)
    return {
        "block_size": block_size,
        "weight_bytes": rate["weight_bytes"],
        "gbs": rate["gbs_streamed"],
        "resident_gbs": rate["gbs_resident"],
        "fraction_of_probe": rate["gbs_streamed"] / machine["bandwidth_gbs"],
    }


def summary(systems: dict[str, dict], llm_bytes: dict[str, int]) -> dict:
    """The report: every system's figures and the headline ratios (None where a leg is missing)."""

    def tok_s(name: str) -> float | None:
        return systems[name]["tok_s"] if name in systems else None

    ours_int4, genai = tok_s("ours_int4"), tok_s(GENAI)
    int4_fraction = systems["ours_int4"]["bandwidth_fraction"] if ours_int4 else None
    return {
        "systems": systems,
        "ours_int4_tok_s": ours_int4,
        "ours_int8_tok_s": tok_s("ours_int8"),
        "ours_fp32_tok_s": tok_s("ours_fp32"),
        "genai_int4_tok_s": genai,
        "ours_int4_over_genai": ours_int4 / genai if ours_int4 and genai else None,
        "int4_bandwidth_fraction": int4_fraction,
        "llm_bytes": llm_bytes,
        "llm_bytes_int4_over_fp32": (
            llm_bytes["int4"] / llm_bytes["fp32"] if {"int4", "fp32"} <= llm_bytes.keys() else None
        ),
    }


def _genai_leg(model: BenchModel, args, past: int, vocab: int) -> tuple[Path, list[int]] | None:
    """The genai model and a prompt as long as ours' past (None, said, without --genai-python)."""
    if not args.genai_python:
        print("int4: --genai-python not given, the onnxruntime-genai leg is skipped", flush=True)
        return None
    if args.genai_model:
        folder = Path(args.genai_model)
    else:
        folder = genai_int4_model(args.genai_python, model.checkpoint, Path(args.workdir))
    return folder, random_prompt(past, vocab, seed=1)


def _artifact_bytes(graph_file: Path, artifact) -> int:
    """Bytes of an artifact's files (the graph at ``graph_file`` and its external data)."""
    return sum((graph_file.parent / ref.file).stat().st_size for ref in artifact.files())
