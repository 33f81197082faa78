"""Two or more packages' decode steps in one process, interleaved: a graph change's own effect.

``python -m crosslmm_edge.benchmarks.decode_ab PKG_A PKG_B --precision int4 --past 128``
loads every package's pipeline once, then for ``--rounds`` rounds runs
``--steps`` greedy decode steps on each in turn (after ``--past`` cached
positions) and prints each package's median step per round and the median of
those. Whole-process suites (``bench``) also see start-up and machine drift
between processes; this isolates the graphs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ..runtime.backends.ort_backend import OrtBackend
from ..runtime.inference.pipeline import Pipeline
from .suite_context import step_ms


def median_steps_ms(pipelines: dict[str, Pipeline], past: int, steps: int, rounds: int) -> dict:
    """Per package, the median decode step (ms) of each round, rounds interleaved."""
    per_round: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            per_round[name].append(step_ms(pipeline, past, steps))
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--precision", help="fp32, int8, int4 (default: the runtime's choice)")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pipelines = {
        str(path): Pipeline(path, precision=args.precision, engine=OrtBackend("cpu", args.threads))
        for path in args.packages
    }
    for name, rounds in median_steps_ms(pipelines, args.past, args.steps, args.rounds).items():
        listed = ", ".join(f"{ms:.2f}" for ms in rounds)
        print(f"{name}: median {statistics.median(rounds):.2f} ms per step ({listed})")


if __name__ == "__main__":
    main()
