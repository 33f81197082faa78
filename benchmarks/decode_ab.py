"""Two or more packages' decode steps in one process, interleaved: a graph change's own effect.

``python -m crosslmm_edge.benchmarks.decode_ab PKG_A PKG_B --precision int4 --past 128``
loads every package's pipeline once, then for ``--rounds`` rounds runs
``--steps`` greedy decode steps on each in turn, the order rotating by one
each round (after ``--past`` cached positions behind a ``--frames``-frame
video; ``--fresh`` opens every package anew each round) and prints each
package's median step per round and the median of those. Whole-process suites
(``bench``) also see start-up and machine drift between processes; this
isolates the graphs.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..runtime.inference.pipeline import Pipeline
from .ours import open_pipeline
from .suite_context import step_ms
from .timing import rotating_rounds


@dataclass(frozen=True)
class StepSettings:
    """What each round measures: decode steps after ``past`` positions behind a video."""

    past: int = 128
    steps: int = 30
    rounds: int = 5
    frames: int = 1


def median_steps_ms(
    open_package: Callable[[str], Pipeline],
    names: list[str],
    settings: StepSettings,
    fresh: bool = False,
) -> dict[str, list[float]]:
    """Per package, the median decode step (ms) of each round, rounds interleaved with
    the order rotating. ``fresh`` opens every package anew each round, so no package
    keeps one session's memory placement (two loads of one package have differed by
    as much as a graph change)."""
    pipelines = {} if fresh else {name: open_package(name) for name in names}

    def measure(name: str) -> float:
        pipeline = open_package(name) if fresh else pipelines[name]
        return step_ms(pipeline, settings.past, settings.steps, settings.frames)

    runs = {name: partial(measure, name) for name in names}
    return rotating_rounds(runs, settings.rounds, warm_up=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--precision", help="fp32, int8, int4 (default: the runtime's choice)")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=1, help="video frames behind the cache")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="open every package anew each round")
    args = parser.parse_args()
    settings = StepSettings(args.past, args.steps, args.rounds, args.frames)
    names = [str(path) for path in args.packages]

    def opener(name: str) -> Pipeline:
        return open_pipeline(Path(name), args.threads, args.precision)

    for name, rounds in median_steps_ms(opener, names, settings, args.fresh).items():
        listed = ", ".join(f"{ms:.2f}" for ms in rounds)
        print(f"{name}: median {statistics.median(rounds):.2f} ms per step ({listed})")


if __name__ == "__main__":
    main()
