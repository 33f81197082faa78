"""What a TensorRT engine was built for, and whether this machine can run it.

A serialized plan runs only on the TensorRT version and GPU it was built for
(unless built version- or hardware-compatible). ``build`` stores an engine
record in the artifact's ``build`` field; before a plan is deserialised the
backend compares it with the running TensorRT, GPU and the plan's bytes, and
refuses a mismatch with "rebuild for ..." instead of letting TensorRT fail
inside deserialisation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from .trt_common import version_numbers

RECORD_FORMAT = 1
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# L4T release -> JetPack (NVIDIA's JetPack archive); only what the record names.
JETPACK_OF_L4T = {"36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1", "36.4.3": "6.2"}
# trt.HardwareCompatibilityLevel members `build` knows; SAME_COMPUTE_CAPABILITY exists from
# TensorRT 10.9, so `build` checks each against the installed TensorRT (hardware_level).
HARDWARE_LEVELS = ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")
# Majors a version-compatible engine crosses (TensorRT 11.4 support matrix, "Engine
# Portability"): TensorRT 8 engines on a TensorRT 10 runtime, 10 on 11; no other pair.
CROSS_MAJOR = {(8, 10), (10, 11)}


def tegra_release(path: Path = TEGRA_RELEASE) -> dict[str, str] | None:
    """L4T (and JetPack) release of a Jetson from /etc/nv_tegra_release; None elsewhere."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return {"l4t": "unknown"}
    l4t = f"{match.group(1)}.{match.group(2)}"
    short = ".".join(l4t.split(".")[:2])
    return {"l4t": l4t, "jetpack": JETPACK_OF_L4T.get(l4t, JETPACK_OF_L4T.get(short, "unknown"))}


def environment(trt: Any, cuda: Any) -> dict[str, Any]:
    """The running TensorRT, GPU and CUDA, as the record stores them."""
    device = cuda.device()
    env = {
        "tensorrt": str(trt.__version__),
        "gpu": device["name"],
        "compute_capability": device["compute_capability"],
        "gpu_memory": int(device["total_memory"]),
        "cuda": cuda.versions(),
    }
    jetson = tegra_release()
    if jetson:
        env["jetson"] = jetson
    return env


def make_record(
    env: Mapping[str, Any], settings: Mapping[str, Any], engine_facts: Mapping[str, Any]
) -> dict[str, Any]:
    """The engine record: environment, build settings and what the engine says of itself.

    settings: version_compatible, hardware_compatibility, strongly_typed,
    optimization_level, workspace_bytes, profiles (min/opt/max per input),
    source {file, sha256}, plan_sha256. engine_facts: io [{name, dtype,
    mode}], device_memory per profile.
    """
    return {"engine_record": RECORD_FORMAT, **env, **settings, **engine_facts}


def runs_version_compatible(built: str, running: str) -> bool:
    """Whether a version-compatible plan built by TensorRT ``built`` runs on ``running``.

    Forward only (a newer runtime), within a major or across the documented pairs.
    """
    b, r = version_numbers(built), version_numbers(running)
    if not b or not r or r < b:
        return False
    return r[0] == b[0] or (b[0], r[0]) in CROSS_MAJOR


def mismatches(record: Mapping[str, Any], env: Mapping[str, Any]) -> list[str]:
    """Why an engine built as ``record`` says cannot run in ``env`` (empty: it can)."""
    if record.get("engine_record") != RECORD_FORMAT:
        return ["an engine record this version of crosslmm-edge does not read"]
    problems = []
    built, running = str(record["tensorrt"]), str(env["tensorrt"])
    if record.get("version_compatible"):
        if not runs_version_compatible(built, running):
            problems.append(f"TensorRT {running} (version-compatible engine built with {built})")
    elif built != running:
        problems.append(f"TensorRT {running} (the engine was built with TensorRT {built})")
    level = record.get("hardware_compatibility", "NONE")
    cc_built, cc_running = str(record["compute_capability"]), str(env["compute_capability"])
    if level == "AMPERE_PLUS":
        if version_numbers(cc_running) < (8, 0):
            problems.append(
                f"{env['gpu']} (compute {cc_running}; the engine needs Ampere or later)"
            )
    elif cc_built != cc_running or (level == "NONE" and record["gpu"] != env["gpu"]):
        problems.append(
            f"{env['gpu']} (compute {cc_running}; the engine was built on {record['gpu']}, "
            f"compute {cc_built})"
        )
    return problems


def require_compatible(
    record: Mapping[str, Any] | None, env: Mapping[str, Any], plan_sha256: str, what: str
) -> None:
    """Refuse, with ``UserError`` "rebuild for ...", a plan that must not be deserialised."""
    if not record or "engine_record" not in record:
        raise UserError(f"{what}: no engine record in the manifest; rebuild it with `build`")
    if record.get("plan_sha256") != plan_sha256:
        raise UserError(
            f"{what}: the plan file does not match the sha256 of its engine record "
            "(corrupt, truncated or replaced); rebuild it with `build`"
        )
    problems = mismatches(record, env)
    if problems:
        raise UserError(f"{what}: rebuild for {'; '.join(problems)} (`crosslmm-edge build`)")
