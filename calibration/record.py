"""Record the real feeds of every graph while the FP32 runtime answers questions.

Calibration must see what the graphs see in use: the video-prefix prefill
with its V2V memory, text-only questions, decode steps, the empty past of a
first chunk. Rather than synthesising those feeds, ``RecordingSession`` wraps
each loaded graph's ``run`` and copies every feed to disk as it goes by, one
``.npz`` per run, so memory stays bounded by one sample whatever the number
of videos. ``FeedReader`` plays them back to ONNX Runtime's calibrator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..runtime.backends.base import DeviceArray, GraphSession
from ..runtime.errors import UserError
from ..runtime.model.contract import POOLING, ROLES
from .calib_data import CalibVideo

OutputHook = Callable[[dict[str, np.ndarray]], None]


class RecordingSession(GraphSession):
    """A ``GraphSession`` that stores every feed (and shows every output) of the real one."""

    def __init__(
        self, inner: GraphSession, store: FeedStore | None, on_outputs: OutputHook | None = None
    ) -> None:
        self.inner, self.store, self.on_outputs = inner, store, on_outputs
        self.name, self.inputs, self.outputs = inner.name, inner.inputs, inner.outputs

    def run(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        if self.store is not None:
            self.store.add(self.name, feeds, self.inputs)
        result = self.inner.run(feeds, write_to, fetch)
        if self.on_outputs is not None:
            self.on_outputs(result)
        return result


class FeedStore:
    """Samples of each role, written to ``folder/ROLE/NNNNNN.npz`` in run order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counts = dict.fromkeys(ROLES, 0)

    def add(self, role: str, feeds: Mapping[str, np.ndarray | DeviceArray], specs: Mapping) -> None:
        """Copy one run's feeds (device arrays are read back) into a file."""
        arrays = {}
        for name, value in feeds.items():
            array = value.numpy() if isinstance(value, DeviceArray) else value
            arrays[name] = np.ascontiguousarray(array, dtype=np.dtype(specs[name].dtype))
        folder = self.folder / role
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{self.counts[role]:06d}.npz", allow_pickle=False, **arrays)  # numbers
        self.counts[role] += 1

    def reader(self, role: str) -> FeedReader:
        return FeedReader(sorted((self.folder / role).glob("*.npz")))


class FeedReader:
    """ONNX Runtime ``CalibrationDataReader`` over stored samples (strided ranges)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.start, self.end = 0, len(files)
        self.position = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.files))
        self.position = start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        with np.load(self.files[self.position]) as data:
            sample = {name: data[name] for name in data.files}
        self.position += 1
        return sample

    def rewind(self) -> None:
        self.set_range(0, len(self.files))


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
    store: FeedStore,
    cross: CrossRange,
    progress: Callable[[], None] = lambda: None,
    warn: Callable[[str], None] = print,
) -> list[CalibVideo]:
    """Answer every video's questions with the FP32 runtime, recording all feeds.

    A video that cannot be decoded is skipped with a warning; the videos
    actually used are returned. Zero usable videos is a ``UserError``.
    """
    from ..runtime.chat.assistant import RuntimeAssistant
    from ..runtime.chat.assistant_types import GenerationOptions
    from ..runtime.video.decode import load_video

    assistant = RuntimeAssistant(package_dir, provider="cpu", precision="fp32")
    sessions = assistant.pipeline.sessions
    for role in ROLES:
        hook = cross if role == POOLING else None
        sessions[role] = RecordingSession(sessions[role], store, hook)
    dims, used = assistant.dims, []
    options = GenerationOptions(max_new_tokens=4)
    for video in videos:
        try:  # decode fully first, so a corrupt file records nothing
            pixels = load_video(video.path, dims.num_frames, dims.image_size)
        except UserError as exc:
            warn(f"warning: skipping calibration video {video.path}: {exc}")
            progress()
            continue
        assistant.set_frames_from_chunks([pixels], None)
        for question in video.questions:
            assistant.ask(question, options)
        assistant.follow_up(video.questions[0], options)  # a later turn after an answer
        used.append(video)
        progress()
    if not used:
        raise UserError("no usable calibration video: every file failed to decode")
    return used
