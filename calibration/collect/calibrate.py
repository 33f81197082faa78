"""Calibration: the FP32 runtime on videos, and the statistics the quantizers keep of it.

``calibrate`` chooses the videos (the user's, or synthetic scenes), says what
it will read and write, and runs ``record.record_calibration`` with one
progress bar per video. What comes back (``Calibration``) is small: per
activation a range, mean |x| per channel and a bounded reservoir of rows
(``activation_stats``), plus the cross K/V ranges. A full disk names the
folder that filled.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ...runtime.errors import UserError
from ...runtime.model.contract import ROLES
from ...runtime.package.loader import choose_artifacts
from ...runtime.package.manifest import Manifest, load_manifest
from ..int8.quantize import QuantizeOptions, selected_nodes
from .activation_stats import GRAM_BATCH, RESERVOIR_ROWS, ActivationStats
from .calib_data import CalibVideo, expand_paths, select_videos, selection_hash, synthetic_videos
from .progress import progress_bar
from .record import CalibrationRun, CrossRange, record_calibration

Log = Callable[[str], None]


@dataclass
class Calibration:
    """Activation statistics of every graph and what they were gathered on."""

    stats: ActivationStats
    videos: list[CalibVideo]
    seed: int
    cross_max: dict[str, np.ndarray] = field(default_factory=dict)
    frames: int = 0

    @property
    def sha256(self) -> str:
        return selection_hash(self.videos, self.seed)


def calibration_frames(manifest: Manifest, where: Path, frames: int | None) -> int:
    """Frames per calibration video: ``frames``, else the model's default capped at the
    most the package was exported for; more than the package takes is a ``UserError``."""
    limit = int(manifest.limits.get("max_frames", manifest.model_config.get("num_frames", 8)))
    if frames is None:
        return min(int(manifest.model_config.get("num_frames", limit)), limit)
    if not 0 < frames <= limit:
        raise UserError(f"--frames {frames}: package {where} takes 1 to {limit} frames per video")
    return frames


def tracked_inputs(package_dir: Path, options: QuantizeOptions) -> dict[str, list[str]]:
    """Per role, the activations the recipe's weight MatMuls read (before any search)."""
    manifest = load_manifest(package_dir)
    chosen = selected_nodes(package_dir, manifest, replace(options, skip_groups=()))
    fp32 = choose_artifacts(manifest, "onnx", "fp32")
    tracked = {}
    for role in ROLES:
        names = {n.name for n in chosen[role]}
        if names:
            path = package_dir / fp32.by_role[role].file
            model = onnx.load(str(path), load_external_data=False)
            inputs = [node.input[0] for node in model.graph.node if node.name in names]
            tracked[role] = list(dict.fromkeys(inputs))
    return tracked


def _activation_widths(package_dir: Path, tracked: dict[str, list[str]]) -> dict[str, list[int]]:
    """Per role, the tracked activations' channel counts (their weights' rows)."""
    manifest = load_manifest(package_dir)
    fp32 = choose_artifacts(manifest, "onnx", "fp32")
    widths: dict[str, list[int]] = {}
    for role, names in tracked.items():
        model = onnx.load(str(package_dir / fp32.by_role[role].file), load_external_data=False)
        rows = {i.name: i.dims[0] for i in model.graph.initializer if len(i.dims) == 2}
        columns = {i.name: i.dims[1] for i in model.graph.initializer if len(i.dims) == 2}
        for node in model.graph.node:  # a tied LM head reads the embedding transposed
            if node.op_type == "Transpose" and node.input[0] in columns:
                rows[node.output[0]] = columns[node.input[0]]
        wanted = set(names)
        seen: set[str] = set()
        for node in model.graph.node:
            if node.op_type == "MatMul" and node.input[0] in wanted and node.input[0] not in seen:
                widths.setdefault(role, []).append(rows.get(node.input[1], 0))
                seen.add(node.input[0])
    return widths


def held_bytes(widths: dict[str, list[int]], gram_roles: tuple[str, ...] = ()) -> int:
    """What the statistics of activations this wide hold: reservoir and sums per channel,
    and a float32 Gram matrix per activation of ``gram_roles``."""
    held = sum(map(sum, widths.values())) * (RESERVOIR_ROWS * 4 + 8)
    gram = sum(4 * w * (w + GRAM_BATCH) for role in gram_roles for w in widths.get(role, []))
    return held + gram  # a Gram matrix and the rows waiting to be folded into it


def describe_plan(
    package_dir: Path, videos: int, frames: int, held: int, temp: Path, synthetic: bool
) -> str:
    """One line: what calibration will read, write and hold, before it starts."""
    manifest = load_manifest(package_dir)
    fp32 = choose_artifacts(manifest, "onnx", "fp32")
    graph_bytes = sum(
        (package_dir / ref.file).stat().st_size for a in fp32.by_role.values() for ref in a.files()
    )
    return (
        f"calibration: {videos} videos x {frames} frames; reads the FP32 graphs "
        f"({graph_bytes / 2**20:.0f} MiB, once) and the videos; writes under {temp} only "
        f"the graphs' headers{' and the synthetic videos' if synthetic else ''} "
        f"(a few MiB); holds {held / 2**20:.0f} MiB of activation statistics"
    )


def calibrate(
    package_dir: Path,
    workdir: Path,
    source: tuple[list[str] | None, int, int],
    options: QuantizeOptions,
    log: Log,
    frames: int | None = None,
    gram_roles: tuple[str, ...] = (),
    also_track: dict[str, list[str]] | None = None,
) -> Calibration:
    """Choose the videos (``source``: paths or None for synthetic, count, seed) and
    gather the statistics; ``frames``: per video (default: ``calibration_frames``);
    ``gram_roles``: roles whose activations also keep a Gram matrix (GPTQ);
    ``also_track``: activations per role beyond the recipe's (a 4-bit LM head's input)."""
    calib, count, seed = source
    manifest = load_manifest(package_dir)
    frames = calibration_frames(manifest, package_dir, frames)
    tracked = tracked_inputs(package_dir, options)
    for role, names in (also_track or {}).items():
        tracked[role] = list(dict.fromkeys([*tracked.get(role, []), *names]))
    try:
        if calib is not None:
            videos = select_videos(expand_paths(calib), count, seed)
        else:
            (workdir / "videos").mkdir()
            videos = synthetic_videos(workdir / "videos", count, frames)
        held = held_bytes(_activation_widths(package_dir, tracked), gram_roles)
        log(describe_plan(package_dir, len(videos), frames, held, workdir, calib is None))
        stats, cross = ActivationStats(seed, gram_roles=gram_roles), CrossRange()
        with progress_bar(len(videos), "calibration (FP32 runs)", "video") as bar:
            run = CalibrationRun(frames, workdir, bar, log)
            used = record_calibration(package_dir, videos, tracked, stats, cross, run)
    except OSError as exc:
        raise disk_error(exc, workdir, "calibration's temporary folder") from None
    return Calibration(stats, used, seed, cross.max_abs, frames)


def disk_error(exc: OSError, folder: Path, what: str) -> UserError:
    """A ``UserError`` naming ``folder`` (a full disk says so, with the way out)."""
    if exc.errno == errno.ENOSPC:
        return UserError(
            f"no space left on the device holding {folder} ({what}); free some space there "
            "or point TMPDIR at a folder with more room"
        )
    return UserError(f"{exc.filename or folder}: {exc.strerror or exc} ({what})")
