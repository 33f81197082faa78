"""The live source's rolling window as the server keeps it: encoded, prefilled on demand.

Frames are encoded (vision encoder and pooling) once, a small batch at a
time, and kept as a ``VideoState`` of the last ``window_frames`` frames. The
window's LLM prefix is not prefilled as frames arrive: dropping the oldest
frame shifts every later position, so each change would cost a prefill of
the whole window, and that LLM run would hold the one worker while requests
wait. The worker prefills the prefix when a question about the live source
comes (``ServedAssistant.install``), once per change of the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..inference.pipeline import Pipeline
from ..video.decode import preprocess
from ..video.video_state import StateKey, VideoState


@dataclass
class LiveWindow:
    """The last ``window_frames`` frames pushed, encoded; ``version`` counts its changes."""

    pipeline: Pipeline
    window_frames: int
    key: StateKey
    # Frames encoded together. One: a queued request waits for at most one frame's encoding
    # (~38 ms on the 0.5B shape's vision side on CPU, where a batch of two costs twice that).
    batch_frames: int = 1
    state: VideoState | None = field(default=None, init=False)
    pending: list[np.ndarray] = field(default_factory=list, init=False)
    version: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        limit = self.pipeline.package.max_frames
        if self.window_frames > limit:
            raise UserError(
                f"the live window needs {self.window_frames} frames; the package holds "
                f"at most {limit} (use a shorter --window or a lower --live-fps)"
            )

    def push(self, frames: list[np.ndarray]) -> bool:
        """Offer uint8 RGB frames [H, W, 3]; full batches are encoded. Whether it changed."""
        self.pending.extend(frames)
        if len(self.pending) < self.batch_frames:
            return False
        return self.flush()

    def flush(self) -> bool:
        """Encode every pending frame now (before a question); whether the window changed."""
        if not self.pending:
            return False
        frames, self.pending = self.pending[-self.window_frames :], []
        pixels = preprocess(np.stack(frames), self.pipeline.dims.image_size)  # [f, 3, S, S]
        embeds, cross = self.pipeline.encode_frames(pixels)
        self.state = self._appended(embeds, cross, len(frames))
        self.version += 1
        return True

    def reset(self) -> None:
        """Forget the window (after a failure: it starts again from the next frames)."""
        self.state, self.pending = None, []
        self.version += 1

    def _appended(self, embeds: np.ndarray, cross: dict[str, np.ndarray], count: int) -> VideoState:
        """A new state: the kept frames, then ``count`` new ones, at most ``window_frames``."""
        old = self.state
        if old is not None:  # pooling is frame-local: frames concatenate along axis 1
            embeds = np.concatenate([old.visual_embeds, embeds], axis=1)
            cross = {name: np.concatenate([old.cross[name], cross[name]], axis=1) for name in cross}
            count += old.num_frames
        drop = max(0, count - self.window_frames)
        p, n = self.pipeline.dims.tokens_per_frame, self.pipeline.dims.patches_per_frame
        embeds = embeds[:, drop * p :]
        cross = {name: value[:, drop * n :] for name, value in cross.items()}
        return VideoState(self.key, count - drop, embeds, cross)
