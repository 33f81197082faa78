"""Interleaved repeats and medians: the only way figures of a shared machine compare."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import TypeVar

Figures = TypeVar("Figures")


def rotating_rounds(
    runs: Mapping[str, Callable[[], Figures]], repeats: int, warm_up: bool = True
) -> dict[str, list[Figures]]:
    """Run every entry once per round, ``repeats`` rounds (after one warm-up round
    unless told otherwise); per entry, what each counted round returned.

    The order rotates by one each round: in one process the entry run first or
    last has been seen to differ by more than many changes under test do.
    """
    names = list(runs)
    results: dict[str, list[Figures]] = {name: [] for name in names}
    for round_index in range(repeats + warm_up):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            figures = runs[name]()
            if round_index or not warm_up:  # round 0 warms caches and allocators up
                results[name].append(figures)
    return results


def interleaved(runs: Mapping[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """``rotating_rounds`` after one warm-up round; per entry, the median of each
    figure its function returns."""
    results = rotating_rounds(runs, repeats)
    return {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for name, rows in results.items()
    }
