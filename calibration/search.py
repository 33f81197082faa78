"""``--max-drift``: the largest INT8 set whose task accuracy stays within a budget.

Layer groups are the recipe's blocks (a decoder layer, a DCAL, the DCAL
memory projections, ...) plus the INT8 cross K/V memory. A sensitivity sweep
quantizes each group alone and measures the worst per-question-type accuracy
drop against FP32; a greedy pass then adds groups from the least to the most
sensitive, keeping each only if the accuracy stays within the budget. The
trials run on synthetic videos of stream 2 (validation), never on ``eval``'s
held-out stream 1.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from ..runtime.package.manifest import load_manifest
from .calibrate import Calibration
from .quantize import QuantizeOptions, selected_nodes

SEARCH_STREAM = 2
CROSS_KV = "cross_kv"


def _accuracy(package: Path, precision: str, videos: int) -> dict[str, float]:
    from ..runtime.chat.assistant import RuntimeAssistant
    from .evaluate import evaluate_assistant

    assistant = RuntimeAssistant(package, provider="cpu", precision=precision)
    return evaluate_assistant(assistant, videos, SEARCH_STREAM).per_type


def _drop(reference: dict[str, float], trial: dict[str, float]) -> float:
    """The worst accuracy loss over question types, in points."""
    return max(100.0 * (reference[q] - trial[q]) for q in reference)


def _options(base: QuantizeOptions, groups: list[str], active: set[str]) -> QuantizeOptions:
    return replace(
        base,
        skip_groups=tuple(sorted(g for g in groups if g not in active and g != CROSS_KV)),
        int8_cross_kv=base.int8_cross_kv and CROSS_KV in active,
    )


def search_recipe(
    package: Path,
    calibration: Calibration,
    base: QuantizeOptions,
    budget: float,
    videos: int,
) -> tuple[QuantizeOptions, dict[str, str]]:
    """The options of the largest INT8 set within ``budget`` points; why each group stayed float."""
    from .quantize_package import _copy_package, add_int8

    manifest = load_manifest(package)
    chosen = selected_nodes(package, manifest, base)
    groups = sorted({n.group for nodes in chosen.values() for n in nodes})
    groups += [CROSS_KV] if base.int8_cross_kv else []
    reference = _accuracy(package, "fp32", videos)
    with tempfile.TemporaryDirectory(prefix="crosslmm-search-") as temp:
        trial_pkg = Path(temp) / "package"
        trial_pkg.mkdir()
        _copy_package(package, trial_pkg)

        def trial(active: set[str]) -> float:
            add_int8(trial_pkg, calibration, _options(base, groups, active))
            return _drop(reference, _accuracy(trial_pkg, "int8", videos))

        sensitivity = {g: trial({g}) for g in groups}
        active: set[str] = set()
        kept: dict[str, str] = {}
        for group in sorted(groups, key=lambda g: (sensitivity[g], g)):
            drop = trial(active | {group})
            if drop <= budget:
                active.add(group)
            else:
                kept[group] = (
                    f"alone it costs {sensitivity[group]:.1f} points; with the groups kept "
                    f"before it {drop:.1f} > budget {budget:g}"
                )
        shutil.rmtree(trial_pkg, ignore_errors=True)
    record = {
        "max_drift_points": budget,
        "videos": videos,
        "stream": SEARCH_STREAM,
        "fp32_accuracy": reference,
        "sensitivity_points": dict(sorted(sensitivity.items(), key=lambda kv: -kv[1])),
        "kept_float": kept,
    }
    return replace(_options(base, groups, active), search=record), kept
