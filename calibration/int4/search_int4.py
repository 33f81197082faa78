"""``--precision int4 --max-drift``: per layer group INT4, INT8 or float, within a budget.

Layer groups are the recipe's LLM blocks (a decoder layer, a DCAL). The whole
LLM in INT4 is tried first; if its worst per-question-type accuracy drop
against FP32 exceeds the budget, a sensitivity sweep measures each group
alone in INT4 (the others float), and the most sensitive groups are widened
one at a time, first to INT8 blocks, then, if INT8 everywhere is still over
budget, to float, until the drop is within it. The trials run on synthetic
videos of ``search.SEARCH_STREAM`` (validation), never on ``eval``'s held-out
stream. The record names the groups kept wider, why, and the bytes of the
LLM's weights it lands on.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from ...runtime.model.contract import LLM
from ...runtime.package.loader import choose_artifacts
from ...runtime.package.manifest import load_manifest
from ..collect.calibrate import Calibration
from ..int8.quantize import QuantizeOptions, selected_nodes
from ..int8.search import SEARCH_STREAM, _accuracy, _drop
from .options import Int4Options


def _llm_bytes(package: Path) -> int:
    """Bytes of the int4 LLM graph's files (graph and external data)."""
    artifact = choose_artifacts(load_manifest(package), "onnx", "int4").by_role[LLM]
    return sum((package / ref.file).stat().st_size for ref in artifact.files())


def search_int4(
    package: Path,
    calibration: Calibration,
    options: QuantizeOptions,
    int4: Int4Options,
    budget: float,
    videos: int,
) -> tuple[Int4Options, dict[str, str]]:
    """The INT4 options within ``budget`` points (groups widened); why each was widened."""
    from ..quantize_package import _copy_package, add_int8

    nodes = selected_nodes(package, load_manifest(package), options)[LLM]
    groups = sorted({n.group for n in nodes})
    reference = _accuracy(package, "fp32", videos)
    trials: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="crosslmm-search-int4-") as temp:
        trial_pkg = Path(temp) / "package"
        trial_pkg.mkdir()
        _copy_package(package, trial_pkg)

        def trial(wider: dict[str, str], label: str) -> float:
            chosen = replace(int4, wider=tuple(sorted(wider.items())), search=None)
            add_int8(trial_pkg, calibration, options, int4=chosen)
            drop = _drop(reference, _accuracy(trial_pkg, "int4", videos))
            bytes_ = _llm_bytes(trial_pkg)
            trials.append({"mix": label, "wider": dict(wider), "drop": drop, "llm_bytes": bytes_})
            return drop

        wider, kept = _widen(groups, budget, trial)
        shutil.rmtree(trial_pkg, ignore_errors=True)
    record = {
        "max_drift_points": budget,
        "videos": videos,
        "stream": SEARCH_STREAM,
        "fp32_accuracy": reference,
        "trials": trials,
        "landed": trials[-1] if trials else None,
        "kept_wider": kept,
    }
    return replace(int4, wider=tuple(sorted(wider.items())), search=record), kept


def _widen(groups: list[str], budget: float, trial) -> tuple[dict[str, str], dict[str, str]]:
    """The widening loop over ``trial(wider) -> drop``; (group -> storage, group -> why)."""
    wider: dict[str, str] = {}
    drop = trial(wider, "all INT4")
    if drop <= budget:
        return wider, {}
    sensitivity = {
        g: trial({o: "float" for o in groups if o != g}, f"only {g} in INT4") for g in groups
    }
    order = sorted(groups, key=lambda g: (-sensitivity[g], g))
    kept: dict[str, str] = {}
    for storage in ("int8", "float"):
        for group in order:
            if drop <= budget:
                break
            wider[group] = storage
            drop = trial(wider, ", ".join(f"{g} {s}" for g, s in sorted(wider.items())))
            kept[group] = (
                f"{storage}: alone in INT4 it costs {sensitivity[group]:.1f} points; "
                f"the mix then drops {drop:.1f} (budget {budget:g})"
            )
        if drop <= budget:
            break
    return wider, kept
