"""Our packages and onnxruntime-genai decoding in one process, interleaved.

``bench --suite int4`` runs every system in its own process, so the ratio also
carries each process's start and the machine's drift between them. Where one
interpreter has both ``crosslmm_edge`` and ``onnxruntime-genai`` (e.g. ``pip
install --no-deps -e .`` into genai's venv), this runs the same greedy
generations as that suite (ours: a 1-frame video prefix, then the prompt;
genai: a prompt as long as both) round by round in one process:

``python -m crosslmm_edge.benchmarks.genai_ab PKG [PKG ...] --genai-model DIR --precision int4``
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

from . import genai_steps
from .ours import decode_run, open_pipeline, prefix_length
from .peers import random_prompt
from .timing import rotating_rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--genai-model", required=True)
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    pipelines = {str(p): open_pipeline(p, args.threads, args.precision) for p in args.packages}
    first = next(iter(pipelines.values()))
    prompt = random_prompt(args.prompt_tokens, first.dims.vocab_size)
    prefix = prefix_length(first.dims)  # ours decodes after a 1-frame video prefix
    genai_prompt = random_prompt(prefix + args.prompt_tokens, first.dims.vocab_size, seed=1)
    model = genai_steps.load_model(args.genai_model, args.threads)
    runs: dict[str, Callable[[], dict]] = {
        name: partial(decode_run, p, prompt, args.new_tokens) for name, p in pipelines.items()
    }
    runs["onnxruntime-genai"] = partial(
        genai_steps.decode_run, model, genai_prompt, args.new_tokens
    )
    rounds = {  # after a warm-up round, the order rotating
        name: [figures["tok_s"] for figures in rows]
        for name, rows in rotating_rounds(runs, args.rounds).items()
    }
    genai = statistics.median(rounds["onnxruntime-genai"])
    for name, values in rounds.items():
        listed = ", ".join(f"{v:.1f}" for v in values)
        median = statistics.median(values)
        print(f"{name}: median {median:.2f} tok/s, {median / genai:.3f} of genai ({listed})")


if __name__ == "__main__":
    main()
