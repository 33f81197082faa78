"""Read a live source (camera, RTSP/HTTP stream, growing file) on its own thread.

The thread decodes frames as they arrive and keeps every ``stride``-th one
(``sample_fps`` of them a second) in a queue as long as the rolling window:
older frames would leave the window anyway, so memory stays bounded however
far the model falls behind. The worker drains the queue into the window.
A file is followed as it grows (read again from the start, frames already
delivered skipped); with ``loop`` it is replayed at its own rate instead, a
simulated camera. A stream that breaks is opened again after a pause.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator

import av
import numpy as np

from ..errors import UserError
from ..video.decode import DECODER_ERRORS

RETRY_S = 1.0  # pause before opening a broken stream or a followed file again


class LiveFeed:
    """Sampled uint8 RGB frames [H, W, 3] of ``source``, newest last."""

    def __init__(self, source: str, sample_fps: float, window_s: float, loop: bool) -> None:
        self.source, self.loop = source, loop
        self.is_file = os.path.isfile(source)
        self.fps = self._probe_fps()
        self.stride = max(1, round(self.fps / sample_fps))
        self.sample_fps = self.fps / self.stride
        self.frames: deque[np.ndarray] = deque(maxlen=max(1, round(window_s * self.sample_fps)))
        self.decoded = 0  # frames read from the source
        self.error: str | None = None  # the last reading problem, for /health
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="live-source", daemon=True)

    def _open(self) -> av.container.InputContainer:
        if self.source.startswith("/dev/video"):
            return av.open(self.source, format="v4l2")
        return av.open(self.source, timeout=10.0)

    def _probe_fps(self) -> float:
        try:
            with self._open() as container:
                rate = container.streams.video[0].average_rate
        except (*DECODER_ERRORS, IndexError) as exc:
            raise UserError(f"--live {self.source}: cannot open it as video ({exc})") from None
        return float(rate) if rate else 25.0

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reading (the thread ends at its next frame or pause)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def drain(self, limit: int | None = None) -> list[np.ndarray]:
        """The oldest ``limit`` frames waiting (all of them when None), oldest first."""
        with self._lock:
            count = len(self.frames) if limit is None else min(limit, len(self.frames))
            return [self.frames.popleft() for _ in range(count)]

    def status(self) -> dict:
        """What ``/health`` reports of the source."""
        return {
            "source": self.source,
            "reading": self._thread.is_alive(),
            "source_fps": self.fps,
            "sample_fps": self.sample_fps,
            "frames_decoded": self.decoded,
            "error": self.error,
        }

    def _read(self) -> None:
        delivered = 0  # frames of a followed file already read
        while not self._stop.is_set():
            try:
                for index, rgb in self._decode(skip=delivered):
                    delivered = max(delivered, index + 1)
                    self._offer(rgb)
                self.error = None
            except DECODER_ERRORS as exc:
                self.error = str(exc)[:200]
            if self.loop:
                delivered = 0
            elif not self.is_file:
                delivered = 0  # a stream that ended starts afresh when it comes back
            self._stop.wait(0 if self.loop else RETRY_S)

    def _decode(self, skip: int) -> Iterator[tuple[int, np.ndarray]]:
        """Frames of one pass over the source (those before ``skip`` decoded, not given)."""
        with self._open() as container:
            start = time.perf_counter()
            for index, frame in enumerate(container.decode(video=0)):
                if self._stop.is_set():
                    return
                if index < skip:
                    continue
                if self.loop:  # pace a replayed file at its own rate
                    delay = index / self.fps - (time.perf_counter() - start)
                    if delay > 0 and self._stop.wait(delay):
                        return
                yield index, frame.to_ndarray(format="rgb24")

    def _offer(self, rgb: np.ndarray) -> None:
        keep = self.decoded % self.stride == 0
        self.decoded += 1
        if keep:
            with self._lock:
                self.frames.append(rgb)
