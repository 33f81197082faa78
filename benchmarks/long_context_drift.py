"""Logit drift between two packages' LLMs after long prompts: what a cache type costs at length.

    python -m crosslmm_edge.benchmarks.long_context_drift REF@int4 TEST@int4 \\
        --positions 113 1013 3913 --steps 16

``drift`` compares packages on videos and questions, whose contexts are a
video's length. This fills each side's cache to ``--positions`` positions
with the model's own K/V (a 1-frame video, then a prompt of random tokens),
then decodes ``--steps`` tokens on both, each fed the reference's greedy
token (teacher forcing), and compares the logits of every step, as ``drift``
orders its sides (reference first): SQNR, relative L2, the largest change
over the largest logit, KL (mean and max), top-1 agreement, and the
reference's gap between its top two logits where the sides disagree
(near-ties flip first). Typical use: ``quantize --kv-cache float32`` as the
reference, the default float16 KV cache of ``onnx/int4`` (same weights) as
the test.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..calibration.drift.drift import StageDrift, TokenDrift, kl_per_row
from ..calibration.drift.drift_run import check_same_model, parse_side
from ..runtime.errors import UserError
from ..runtime.inference.pipeline import Pipeline
from .ours import prefix_length, video_cache
from .peers import random_prompt


def filled_logits(pipeline: Pipeline, prompt: list[int], steps: int) -> tuple:
    """A cache after a 1-frame video and ``prompt`` (its T2V feeds too) and the prompt's
    last logits [V]."""
    cache, text = video_cache(pipeline, 1, prefix_length(pipeline.dims) + len(prompt) + steps)
    return cache, text, pipeline.prefill(cache, prompt, pipeline.shapes.no_visual(), text).copy()


def teacher_forced(ref: Pipeline, test: Pipeline, prompt: list[int], steps: int):
    """Logits [steps + 1, V] of ``ref`` and of ``test``, both decoding ``ref``'s greedy
    tokens, and the positions cached before the first step."""
    sides = [filled_logits(p, prompt, steps) for p in (ref, test)]  # (cache, text, logits)
    positions, rows = sides[0][0].length, ([sides[0][2]], [sides[1][2]])
    for _ in range(steps):
        token = [int(np.argmax(rows[0][-1]))]
        for pipeline, (cache, text, _), out in zip((ref, test), sides, rows, strict=True):
            logits = pipeline.prefill(cache, token, pipeline.shapes.no_visual(), text)
            out.append(logits.copy())  # the session's output buffer, rewritten next step
    return np.stack(rows[0]), np.stack(rows[1]), positions


def compare_logits(ref: np.ndarray, test: np.ndarray) -> dict:
    """Drift of ``test`` from ``ref`` (both [steps, V] at the same positions)."""
    values, tokens = StageDrift(), TokenDrift()
    values.add(ref, test)
    tokens.add(ref, test)
    top_two = np.sort(ref, axis=-1)[:, -2:]
    flips = ref.argmax(-1) != test.argmax(-1)
    return {
        "sqnr_db": values.sqnr_db,
        "rel_l2": values.rel_l2,
        "max_change_over_max_logit": values.max_abs / float(np.abs(ref).max()),
        "kl_mean": tokens.kl_mean,
        "kl_max": float(kl_per_row(ref, test).max()),
        "top1_agreement": tokens.top1_agreement,
        "ref_top2_gap_median": float(np.median(top_two[:, 1] - top_two[:, 0])),
        "ref_top2_gap_at_flips": (top_two[flips, 1] - top_two[flips, 0]).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="PKG or PKG@precision: the reference; its tokens are fed")
    parser.add_argument("test", help="PKG or PKG@precision: the side measured against it")
    parser.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 3900])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sides = [parse_side(args.ref), parse_side(args.test)]
    try:
        check_same_model(sides[0][0], sides[1][0])
        ref, test = (Pipeline(f, precision=p, threads=args.threads) for f, p in sides)
    except UserError as error:  # a package that is not there, not one model, no such precision
        parser.error(str(error))
    prefix = prefix_length(ref.dims)
    room = min(p.package.max_context for p in (test, ref)) - args.steps
    if any(not prefix < n <= room for n in args.positions):
        parser.error(f"--positions must lie in {prefix + 1}..{room} (video prefix .. context)")
    report = {}
    for count in args.positions:
        prompt = random_prompt(count - prefix, ref.dims.vocab_size, seed=count)
        ref_rows, test_rows, positions = teacher_forced(ref, test, prompt, args.steps)
        report[positions] = compare_logits(ref_rows, test_rows)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
