"""The serve worker's live window: queued requests go before its encoding, and it holds
the last frames, each encoded once.

The order test runs the engine's real worker thread and queue; only the model
work is replaced by a log (``_push_live`` would encode a batch, ``_serve`` answer).
"""

from __future__ import annotations

import threading
from collections import deque
from types import SimpleNamespace

import numpy as np

from crosslmm_edge.demo import embedded_package
from crosslmm_edge.runtime.inference.pipeline import Pipeline
from crosslmm_edge.runtime.serve.engine import Engine, Job
from crosslmm_edge.runtime.serve.live_window import LiveWindow
from crosslmm_edge.runtime.serve.settings import ServeSettings
from crosslmm_edge.runtime.video.decode import preprocess
from crosslmm_edge.runtime.video.video_state import StateKey

FRAMES = 4  # waiting live frames: four batches of one


class FakeFeed:
    """A live feed whose frames are all waiting already (the camera ran ahead)."""

    sample_fps = 2.0

    def __init__(self, count: int) -> None:
        self.frames = deque(np.full((2, 2, 3), i, dtype=np.uint8) for i in range(count))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self, limit: int | None = None) -> list[np.ndarray]:
        count = len(self.frames) if limit is None else min(limit, len(self.frames))
        return [self.frames.popleft() for _ in range(count)]


class LoggedEngine(Engine):
    """An engine whose model work is a log; a request arrives during the first live batch."""

    def __init__(self) -> None:
        pipeline = SimpleNamespace(package=SimpleNamespace(max_frames=8))
        key = SimpleNamespace(state=None)
        assistant = SimpleNamespace(pipeline=pipeline, cache_key=lambda *args: key)
        super().__init__(assistant, ServeSettings(), FakeFeed(FRAMES))  # type: ignore[arg-type]
        self.log: list[str] = []
        self.idle = threading.Event()

    def _push_live(self, frames: list[np.ndarray]) -> None:
        self.log.append(f"live {[int(f[0, 0, 0]) for f in frames]}")
        if len(self.log) == 1:  # a client asks while the first batch is being encoded
            self.submit(Job(None, None, lambda event: None))  # type: ignore[arg-type]
        if not self.live.frames:  # type: ignore[union-attr]
            self.idle.set()

    def _serve(self, job: Job) -> None:
        self.log.append("request")


def test_a_queued_request_goes_before_the_next_live_batch() -> None:
    engine = LoggedEngine()
    engine.start()
    try:
        assert engine.idle.wait(10), engine.log
    finally:
        engine.stop()
    # The batch under way finishes; the request is next; live encoding then resumes.
    assert engine.log == ["live [0]", "request", "live [1]", "live [2]", "live [3]"]


def test_live_window_holds_the_last_frames_encoded_once_each() -> None:
    pipeline = Pipeline(embedded_package(log=lambda message: None))
    key = StateKey("live", 0, pipeline.dims.image_size, "onnx/fp32", "x")
    window = LiveWindow(pipeline, window_frames=3, key=key, batch_frames=2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(7)]
    assert not window.push(frames[:1])  # a batch is two frames: nothing encoded yet
    for start in (1, 3, 5):
        assert window.push(frames[start : start + 2])
    assert window.version == 3 and window.state is not None and window.state.num_frames == 3
    pixels = preprocess(np.stack(frames[-3:]), pipeline.dims.image_size)
    embeds, cross = pipeline.encode_frames(pixels)  # the last three, encoded afresh
    np.testing.assert_allclose(window.state.visual_embeds, embeds, atol=1e-5)
    assert window.state.cross.keys() == cross.keys()
    for name, value in cross.items():
        np.testing.assert_allclose(window.state.cross[name], value, atol=1e-5)
