"""A live video source kept as a rolling window: "the last N seconds".

Frames arrive one at a time at the source's rate; every ``stride``-th is kept
(so the window holds ``seconds * sample_fps`` frames), encoded once in small
batches and appended to the assistant's video state. With
``v2v_scope="frame"`` appended frames are prefilled without recomputing the
earlier ones; when the window is full the oldest frames are dropped, which
shifts every later position, so the prefix is prefilled again from the kept
embeddings (the LLM only: no frame is ever encoded twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..video.decode import preprocess
from .assistant import RuntimeAssistant


@dataclass
class RollingWindow:
    """Feed frames with ``push``; the assistant always watches the last ``seconds``."""

    assistant: RuntimeAssistant
    seconds: float
    source_fps: float
    sample_fps: float = 2.0
    batch_frames: int = 2  # frames encoded together (fewer, larger graph runs)
    pending: list[np.ndarray] = field(default_factory=list, init=False)
    seen: int = field(default=0, init=False)  # source frames pushed so far
    started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.source_fps <= 0 or self.sample_fps <= 0:
            raise UserError("seconds, source fps and sample fps must be positive")
        self.stride = max(1, round(self.source_fps / self.sample_fps))
        self.window_frames = max(1, round(self.seconds * self.source_fps / self.stride))
        limit = self.assistant.pipeline.package.max_frames
        if self.window_frames > limit:
            raise UserError(
                f"a {self.seconds} s window at {self.sample_fps} frames/s needs "
                f"{self.window_frames} frames; the package holds at most {limit}"
            )

    @property
    def frames_in_window(self) -> int:
        state = self.assistant.state
        return state.num_frames if (self.started and state is not None) else 0

    def push(self, rgb: np.ndarray) -> bool:
        """Offer one uint8 RGB frame [H, W, 3]; True when the window changed."""
        keep = self.seen % self.stride == 0
        self.seen += 1
        if not keep:
            return False
        self.pending.append(rgb)
        if len(self.pending) < self.batch_frames:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Encode the pending frames into the window now (before a question, say)."""
        if not self.pending:
            return
        pixels = preprocess(np.stack(self.pending), self.assistant.dims.image_size)
        self.pending = []
        if not self.started or len(pixels) >= self.window_frames:
            self.assistant.start_live(pixels[-self.window_frames :])
            self.started = True
            return
        room = self.window_frames - len(pixels)
        if self.frames_in_window > room:
            # Drop the oldest, then one prefix prefill over the new window: exact in both
            # V2V scopes (a plain frame-scope append keeps the header's older T2V view).
            self.assistant.keep_last_frames(room, refill_prefix=False)
            self.assistant.append_frames(pixels, refill_prefix=True)
            return
        self.assistant.append_frames(pixels)
