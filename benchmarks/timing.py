"""Interleaved repeats and medians: the only way figures of a shared machine compare."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping


def interleaved(runs: Mapping[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Run every entry once per round, ``repeats`` rounds after one warm-up round.

    Returns, per entry, the median of each figure its function returns.
    """
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            figures = run()
            if round_index:  # round 0 warms caches and allocators up
                results[name].append(figures)
    return {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for name, rows in results.items()
    }
