"""Decode speed with and without huge pages under the CPU backend's memory, in fresh processes.

    python3 -m crosslmm_edge.benchmarks.huge_pages_ab PKG [--precision int4] [--pairs 8]

A Pipeline with an INT4 LLM asks the CPU backend to put the loaded weights
on 2 MiB pages (``runtime/backends/huge_pages.py``); here both sides are
forced, asked and not asked, whatever the precision. Whether that pays is a
property of the process, so each side runs in a process of its own:
``--pairs`` pairs, the order alternating, each child decoding
``--new-tokens`` greedily after a 1-frame video and a ``--prompt-tokens``
prompt (``ours.decode_run``). Prints each pair's tok/s and ratio (huge pages
over without) and their medians.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ..runtime.package.loader import open_package
from .ours import ours_decode_child
from .peers import random_prompt


def run_pairs(args: argparse.Namespace) -> list[dict[str, float]]:
    """Per pair: tok/s with huge pages (``on``), without (``off``), and ``on / off``."""
    vocab = open_package(args.package, verify=False).dims.vocab_size
    prompt = random_prompt(args.prompt_tokens, vocab)
    pairs = []
    for index in range(args.pairs):
        order = (True, False) if index % 2 == 0 else (False, True)
        tok_s = {}
        for huge in order:
            figures = ours_decode_child(
                args.package, args.threads, prompt, args.new_tokens, "cpu", args.precision, huge
            )
            tok_s["on" if huge else "off"] = figures["tok_s"]
        pairs.append({**tok_s, "ratio": tok_s["on"] / tok_s["off"]})
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--precision", default=None, help="fp32, int8, int4 (default: best)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    pairs = run_pairs(args)
    for index, pair in enumerate(pairs):
        print(
            f"pair {index}: huge pages {pair['on']:6.2f} tok/s, without {pair['off']:6.2f} tok/s, "
            f"ratio {pair['ratio']:.3f}"
        )
    print(
        f"median: huge pages {statistics.median(p['on'] for p in pairs):.2f} tok/s, without "
        f"{statistics.median(p['off'] for p in pairs):.2f} tok/s, ratio "
        f"{statistics.median(p['ratio'] for p in pairs):.3f} ({len(pairs)} pairs, "
        f"{args.threads} threads, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
