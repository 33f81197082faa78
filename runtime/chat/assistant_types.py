"""What every assistant (PyTorch reference or packaged runtime) takes and returns.

The CLI (``ask``, ``chat``), ``eval`` and the samples talk to this protocol
only, so a checkpoint and an exported package are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..inference.sampling import GenerationOptions

__all__ = ["Answer", "Assistant", "GenerationOptions", "TokenCallback"]


@dataclass
class Answer:
    """One answered question, as ``ask --json`` prints it."""

    question: str
    answer: str
    token_ids: list[int]
    ttft_s: float
    decode_tokens_per_s: float
    video_prefix_reused: bool = False
    logprobs: list[float] | None = field(default=None)

    def to_json(self) -> dict:
        """The JSON object of this answer (``logprobs`` only when computed)."""
        out = {
            "question": self.question,
            "answer": self.answer,
            "token_ids": self.token_ids,
            "ttft_s": self.ttft_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "video_prefix_reused": self.video_prefix_reused,
        }
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        return out


TokenCallback = Callable[[str], None]


class Assistant(Protocol):
    """A model that watches one video at a time and answers about it."""

    def set_video(self, path: str, num_frames: int | None = None) -> None:
        """Decode, encode and prefill a video; later questions reuse it."""

    def ask(
        self, question: str, options: GenerationOptions, on_text: TokenCallback | None = None
    ) -> Answer:
        """Answer in a fresh turn that starts from the video prefix."""

    def follow_up(
        self, question: str, options: GenerationOptions, on_text: TokenCallback | None = None
    ) -> Answer:
        """Answer as the next turn of the current conversation."""

    def reset(self) -> None:
        """Forget the conversation; the video and its prefix cache stay."""
