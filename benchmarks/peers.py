"""The peers, on the same weights: transformers' ``Qwen2ForCausalLM`` (eager and SDPA)
and optimum's ``ORTModelForCausalLM`` (run in its own interpreter: it pins transformers)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np


def qwen2_config(text, attention: str):
    """transformers' ``Qwen2Config`` for our ``TextConfig`` (same field names)."""
    import transformers

    return transformers.Qwen2Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        tie_word_embeddings=text.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta},
        attn_implementation=attention,
    )


def qwen2_from_checkpoint(checkpoint: Path, attention: str):
    """Our checkpoint's ``language_model.*`` as a transformers ``Qwen2ForCausalLM``."""
    import torch
    import transformers
    from safetensors.torch import load_file

    from ..runtime.model.config import CrossLMMConfig
    from ..runtime.package.files import read_json

    text = CrossLMMConfig.from_dict(read_json(checkpoint / "config.json")).text_config
    config = qwen2_config(text, attention)
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(config)
    prefix = "language_model."
    weights = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        state = load_file(file)
        weights.update({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    if text.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict(weights, assign=True, strict=False)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers off meta
    return model.eval()


def transformers_decode(model, prompt: list[int], new_tokens: int) -> dict:
    """TTFT and decode tokens/s of a greedy manual loop with transformers' KV cache."""
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        first = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        end = time.perf_counter()
    return {"ttft_s": first - start, "tok_s": (new_tokens - 1) / (end - first)}


OPTIMUM_CHILD = """
import json, sys, time, numpy as np
from optimum.onnxruntime import ORTModelForCausalLM
import onnxruntime as ort
folder, io_binding = sys.argv[1], sys.argv[2] == "1"
threads, new, prompt = int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
options = ort.SessionOptions(); options.intra_op_num_threads = threads
model = ORTModelForCausalLM.from_pretrained(
    folder, use_io_binding=io_binding, session_options=options, provider="CPUExecutionProvider"
)
import torch
ids = torch.tensor([prompt])
times = []
def run():
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return time.perf_counter() - start
run()  # warm
total = run()
start = time.perf_counter(); model.generate(ids, max_new_tokens=1, do_sample=False)
ttft = time.perf_counter() - start
print(json.dumps({"ttft_s": ttft, "tok_s": (new - 1) / max(total - ttft, 1e-9)}))
"""


def optimum_decode(
    python: str, onnx_folder: Path, io_binding: bool, threads: int, prompt: list[int], new: int
) -> dict:
    """optimum's ``generate`` in ``python`` (a venv with optimum-onnx) on an exported folder."""
    args = [python, "-c", OPTIMUM_CHILD, str(onnx_folder), "1" if io_binding else "0"]
    args += [str(threads), str(new), json.dumps(prompt)]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def random_prompt(length: int, vocab: int, seed: int = 0) -> list[int]:
    """Token ids that avoid the special ids at the bottom of the vocabulary."""
    return np.random.default_rng(seed).integers(10, vocab, length).tolist()
