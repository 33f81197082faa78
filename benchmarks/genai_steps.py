"""onnxruntime-genai's greedy decode, timed; runs in genai's own venv.

It imports nothing of crosslmm_edge, so ``peer_genai`` runs it as a script
by path in ``--genai-python`` (``python genai_steps.py FOLDER THREADS NEW
PROMPT_JSON`` prints one JSON line), and ``genai_ab`` imports it beside our
pipeline where both live in one interpreter.
"""

from __future__ import annotations

import json
import sys
import time


def load_model(folder: str, threads: int):
    """An ``og.Model`` of ``folder`` with ``threads`` intra-op threads."""
    import onnxruntime_genai as og

    config = og.Config(folder)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def decode_run(model, prompt: list[int], count: int) -> dict:
    """TTFT and tokens/s (steps 2..count) of one greedy run that never stops early."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt) + count
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    stamps = [time.perf_counter()]
    generator.append_tokens(prompt)
    for _ in range(count):
        generator.generate_next_token()
        stamps.append(time.perf_counter())
    return {"ttft_s": stamps[1] - stamps[0], "tok_s": (count - 1) / (stamps[-1] - stamps[1])}


def main() -> None:
    folder, threads, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prompt = json.loads(sys.argv[4])
    model = load_model(folder, threads)
    decode_run(model, prompt, 4)  # warm
    print(json.dumps(decode_run(model, prompt, new)))


if __name__ == "__main__":
    main()
