"""Decode-step cost of the two KV-cache interfaces an LLM graph can have.

    python3 -m crosslmm_edge.benchmarks.kv_interface [--layers 4] [--past 256 1024 4096] \
        [--repeats 10]

"new": the package's interface: the graph returns only the chunk's new K/V
entries and the runtime writes them into a preallocated cache at
``past_len`` (the past goes in as a view of that buffer, no copy).
"concat": the Hugging Face style: the graph returns ``present = concat(past,
new)``, so every step copies the whole cache inside the graph.

Both graphs come from the same model with Qwen2.5-1.5B layer sizes (1536
wide, 12 heads, 2 KV heads, head 128), fewer layers and by default a small
MLP and vocabulary; times are the fastest of ``--repeats`` ONNX Runtime CPU
decode steps, cache writes included.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(layers: int, mlp: int, vocab: int):
    from ..export.model import build_model
    from ..runtime.model.config import CrossLMMConfig, TextConfig, VisionConfig

    vision = VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    text = TextConfig(
        vocab_size=vocab,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        max_position_embeddings=16384,
    )
    config = CrossLMMConfig(
        vision_config=vision, text_config=text, pooled_grid=1, dcal_every=layers, video_token_id=5
    )
    return build_model(config)


def concat_wrapper(model):
    """The LLM graph with ``present = concat(past, new)`` outputs."""
    import torch

    from ..export.graph_modules import LLMGraph

    class ConcatLLM(LLMGraph):
        def forward(self, input_ids, visual_embeds, position_ids, *caches):
            logits, *new = super().forward(input_ids, visual_embeds, position_ids, *caches)
            past = caches[: 2 * self.num_layers]
            return (logits, *[torch.cat([p, n], dim=1) for p, n in zip(past, new, strict=True)])

    return ConcatLLM(model).eval()


def export_both(model, folder: Path) -> dict[str, Path]:
    from ..export.graph_modules import graph_module
    from ..export.graph_specs import trace_sizes
    from ..export.onnx_export import export_graph
    from ..runtime.model.contract import ExportLimits, TensorSpec, llm_spec

    config = model.config
    spec = llm_spec(config, ExportLimits(8, 16384), "float32")
    full = tuple(
        TensorSpec(t.name, t.dtype, (1, "total_len", *t.dims[2:]))
        if t.name.startswith("present")
        else t
        for t in spec.outputs
    )
    spec_full = dataclasses.replace(spec, outputs=full)
    sizes, vocab = trace_sizes(config)["llm"], config.text_config.vocab_size
    paths = {"new": folder / "llm_new.onnx", "concat": folder / "llm_concat.onnx"}
    export_graph(graph_module("llm", model), spec, sizes, vocab, paths["new"])
    export_graph(concat_wrapper(model), spec_full, sizes, vocab, paths["concat"])
    return paths


def step_feeds(config, past: list[np.ndarray], memory: list[np.ndarray], position: int) -> list:
    hidden = config.text_config.hidden_size
    return [
        np.array([[7]], dtype=np.int64),
        np.zeros((1, 0, hidden), np.float32),
        np.array([[position]], dtype=np.int64),
        *past,
        *memory,
    ]


def time_steps(session, config, past_len: int, repeats: int, interface: str) -> tuple[float, int]:
    """The fastest of ``repeats`` decode steps at ``past_len`` (least disturbed by other
    load) and the cache bytes one step copies."""
    t = config.text_config
    layers, kv = t.num_hidden_layers, (t.num_key_value_heads, t.head_dim)
    rng = np.random.default_rng(0)
    buffers = [
        rng.standard_normal((1, past_len + repeats, *kv), dtype=np.float32)
        for _ in range(2 * layers)
    ]
    memory_kv = rng.standard_normal((1, 729 * 8, *kv), dtype=np.float32)
    memory = [
        memory_kv[:, :0],
        memory_kv[:, :0],
        memory_kv,
        memory_kv,
    ] * config.num_dcal  # text-only step
    names = [i.name for i in session.get_inputs()]
    times, length = [], past_len
    past = (
        [b[:, :past_len] for b in buffers]
        if interface == "new"
        else [b[:, :past_len].copy() for b in buffers]
    )
    for _ in range(repeats):
        start = time.perf_counter()
        feeds = step_feeds(config, past, memory, length)
        _, *present = session.run(None, dict(zip(names, feeds, strict=True)))
        if interface == "new":  # write one entry per layer into the preallocated buffer
            for buffer, entry in zip(buffers, present, strict=True):
                buffer[:, length : length + 1] = entry
            past = [b[:, : length + 1] for b in buffers]
        else:
            past = present
        times.append(time.perf_counter() - start)
        length += 1
    entry_bytes = 2 * layers * kv[0] * kv[1] * 4
    copied = entry_bytes * (1 if interface == "new" else past_len + 1)
    return min(times), copied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--past", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=10)
    # A small MLP and vocabulary keep weight reads from hiding the cache traffic on a CPU.
    parser.add_argument("--mlp", type=int, default=1536, help="intermediate size (2B: 8960)")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary (2B: 151936)")
    args = parser.parse_args()
    import onnxruntime as ort

    model = build(args.layers, args.mlp, args.vocab)
    with tempfile.TemporaryDirectory() as temp:
        paths = export_both(model, Path(temp))
        sessions = {
            k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            for k, p in paths.items()
        }
        header = ("past", "new ms", "concat ms", "time ratio", "new KiB", "concat KiB")
        print("{:>6} {:>8} {:>10} {:>10} {:>8} {:>11}".format(*header))
        for past_len in args.past:
            new_s, new_b = time_steps(sessions["new"], model.config, past_len, args.repeats, "new")
            cat_s, cat_b = time_steps(
                sessions["concat"], model.config, past_len, args.repeats, "concat"
            )
            print(
                f"{past_len:>6} {new_s * 1e3:>8.2f} {cat_s * 1e3:>10.2f} {cat_s / new_s:>10.2f} "
                f"{new_b / 1024:>8.0f} {cat_b / 1024:>11.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
