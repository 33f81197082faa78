"""Run the FP32 runtime on the calibration videos and gather what quantization needs.

Calibration must see what the graphs see in use: the video-prefix prefill
with its V2V memory, text-only questions, decode steps, the empty past of a
first chunk. Rather than synthesising those feeds, each graph is loaded in a
copy that also outputs the activations its selected MatMuls read
(``activation_stats.StatsSession``), and their statistics are folded in as
the runtime answers questions: nothing per feed is kept, so disk use is
independent of the number of videos and memory bounded by the statistics.
``RecordingSession`` shows a graph's outputs to a hook (the cross K/V ranges,
``drift``'s stage taps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.backends.base import GraphSession
from ...runtime.errors import UserError
from ...runtime.model.contract import POOLING, ROLES
from .activation_stats import (
    ActivationStats,
    StatsSession,
    remove_tracking_graphs,
    write_tracking_graph,
)
from .calib_data import CalibVideo

OutputHook = Callable[[dict[str, np.ndarray]], None]


@dataclass
class CalibrationRun:
    """Where and how a calibration runs: frames per video, a scratch folder, a progress bar."""

    frames: int
    workdir: Path
    bar: Any
    warn: Callable[[str], None] = print


class RecordingSession(GraphSession):
    """A ``GraphSession`` that shows every output of the real one to a hook."""

    def __init__(self, inner: GraphSession, on_outputs: OutputHook | None = None) -> None:
        self.inner, self.on_outputs = inner, on_outputs
        self.name, self.inputs, self.outputs = inner.name, inner.inputs, inner.outputs

    def run(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        result = self.inner.run(feeds, write_to, fetch)
        if self.on_outputs is not None:
            self.on_outputs(result)
        return result


class CrossRange:
    """Running max |x| per KV head of every cross K/V output of the pooling graph."""

    def __init__(self) -> None:
        self.max_abs: dict[str, np.ndarray] = {}

    def __call__(self, outputs: dict[str, np.ndarray]) -> None:
        for name, value in outputs.items():
            if name == "visual_embeds" or value.size == 0:
                continue
            head_max = np.abs(value).max(axis=(0, 1, 3)).astype(np.float32)  # [kvh]
            old = self.max_abs.get(name)
            self.max_abs[name] = head_max if old is None else np.maximum(old, head_max)


def record_calibration(
    package_dir: Path,
    videos: list[CalibVideo],
    tracked: Mapping[str, list[str]],
    stats: ActivationStats,
    cross: CrossRange,
    run: CalibrationRun,
) -> list[CalibVideo]:
    """Answer every video's questions with the FP32 runtime, gathering statistics.

    ``tracked``: per graph role, the activations whose statistics ``stats``
    collects. A video that cannot be decoded is skipped with a warning; the
    videos actually used are returned. Zero usable videos is a ``UserError``.
    """
    from ...runtime.chat.assistant import RuntimeAssistant

    assistant = RuntimeAssistant(package_dir, provider="cpu", precision="fp32")
    folder = run.workdir / "tracking-graphs"
    try:
        _load_tracking_graphs(assistant.pipeline, tracked, stats, folder)
        sessions = assistant.pipeline.sessions
        sessions[POOLING] = RecordingSession(sessions[POOLING], cross)
        used = [video for video in videos if _answer(assistant, video, run)]
    finally:
        # The sessions hold what they loaded; the links to the package's weights must
        # go before anything reads them with onnx (which refuses hard-linked data).
        remove_tracking_graphs(folder)
    if not used:
        raise UserError("no usable calibration video: every file failed to decode")
    return used


def _answer(assistant, video: CalibVideo, run: CalibrationRun) -> bool:
    """Ask ``video``'s questions (and a follow-up); False when it cannot be decoded."""
    from ...runtime.chat.assistant_types import GenerationOptions
    from ...runtime.video.decode import load_video

    options = GenerationOptions(max_new_tokens=4)
    run.bar.set_postfix_str(f"{video.path.name}: decoding")
    try:  # decode fully first, so a corrupt file records nothing
        pixels = load_video(video.path, run.frames, assistant.dims.image_size)
    except UserError as exc:
        run.warn(f"warning: skipping calibration video {video.path}: {exc}")
        run.bar.update()
        return False
    run.bar.set_postfix_str(f"{video.path.name}: encoding {run.frames} frames")
    assistant.set_frames(pixels)  # in the runtime's encoder chunks, as ``ask`` runs them
    for number, question in enumerate(video.questions, 1):
        run.bar.set_postfix_str(f"{video.path.name}: question {number}/{len(video.questions)}")
        assistant.ask(question, options)
    assistant.follow_up(video.questions[0], options)  # a later turn after an answer
    run.bar.update()
    return True


def _load_tracking_graphs(
    pipeline, tracked: Mapping[str, list[str]], stats: ActivationStats, folder: Path
) -> None:
    """Replace each graph's session by its statistics-reporting copy (one at a time,
    the old one released first, so the weights are in memory once)."""
    folder.mkdir(parents=True, exist_ok=True)
    for role in ROLES:
        names = tracked.get(role, [])
        if not names:
            continue
        artifact = pipeline.artifacts.by_role[role]
        source = pipeline.package.path(artifact, verify=False)  # checked when first opened
        target = folder / role / Path(artifact.file).name
        target.parent.mkdir()
        write_tracking_graph(source, target, names)
        del pipeline.sessions[role]
        dims = pipeline.package.manifest.graphs[role].dims
        session = pipeline.backend.load(target, role, artifact.inputs, dims)
        pipeline.sessions[role] = StatsSession(session, role, names, stats)
