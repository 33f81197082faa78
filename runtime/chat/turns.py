"""Turn-taking shared by the reference and the runtime assistants.

Both keep a KV cache whose first ``prefix_length`` entries are the video
prefix: a question forks from it by truncation, a follow-up continues after
the last answer. Only how a turn is generated differs (``_answer``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any, Generic, Protocol, TypeVar

from ..errors import UserError
from .assistant_types import Answer, GenerationOptions, TokenCallback
from .prompt import PromptBuilder


class PrefixCache(Protocol):
    """What turn-taking needs of a KV cache (the runtime's and the reference's)."""

    length: int

    def truncate(self, length: int) -> None: ...


CacheT = TypeVar("CacheT", bound=PrefixCache)


class TurnTaking(ABC, Generic[CacheT]):
    """``ask``/``follow_up``/``reset`` over a cached video prefix.

    The state it owns is set here; a subclass prepares the video (setting
    ``cache`` and ``prefix_length``) and implements ``_require_video`` and
    ``_answer``.
    """

    def __init__(self, prompt: PromptBuilder, system: str | None, max_context: int) -> None:
        self.prompt = prompt
        self.system = system
        self.max_context = max_context
        self.cache: CacheT | None = None  # set with the video
        self.prefix_length = 0  # cache entries that belong to the video prefix
        self.pending_ids: list[int] = []  # answer tokens a follow-up must feed first

    def reset(self) -> None:
        """Forget the conversation; the next question starts from the video prefix."""
        if self.cache is not None:
            self.cache.truncate(self.prefix_length)
        self.pending_ids = []

    def ask(
        self, question: str, options: GenerationOptions, on_text: TokenCallback | None = None
    ) -> Answer:
        """Answer in a fresh turn that starts from the video prefix."""
        self._require_video()
        self.reset()
        ids = self.prompt.first_question_ids(question, self.system)
        return self._answer(question, ids, options, on_text)

    def follow_up(
        self, question: str, options: GenerationOptions, on_text: TokenCallback | None = None
    ) -> Answer:
        """Answer as the next turn of the conversation (only the new tokens are prefilled)."""
        if self.video_cache().length == self.prefix_length:  # no turn yet: this is the first
            return self.ask(question, options, on_text)
        ids = self.pending_ids + self.prompt.next_turn_ids(question, self.system)
        return self._answer(question, ids, options, on_text)

    def check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        """Refuse up front a turn that would overflow the context, with the counts."""
        cached = self.video_cache().length
        needed = cached + prompt_len + max_new_tokens
        if needed > self.max_context:
            raise UserError(
                f"prompt + video + max_new_tokens = {cached} cached (video prefix "
                f"{self.prefix_length}) + {prompt_len} prompt + {max_new_tokens} new = "
                f"{needed} tokens, more than the context of {self.max_context}"
            )

    def _remember_end(self, tokens: list[int], stop_ids: Collection[int]) -> None:
        """Keep what a follow-up must feed before ``next_turn_ids``.

        Generation leaves its last token out of the cache; ``next_turn_ids``
        starts with ``<|im_end|>``, so a stop token needs nothing more, and an
        answer cut by max_new_tokens needs its last token fed back.
        """
        stopped = bool(tokens) and tokens[-1] in stop_ids
        self.pending_ids = [] if stopped or not tokens else [tokens[-1]]

    def video_cache(self) -> CacheT:
        """The current video's cache; ``UserError`` when no video is set."""
        self._require_video()
        if self.cache is None:  # a subclass sets it with the video; this narrows the type
            raise UserError("no video: call set_video first")
        return self.cache

    @abstractmethod
    def _require_video(self) -> Any:
        """Raise ``UserError`` when no video is set."""

    @abstractmethod
    def _answer(
        self,
        question: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        on_text: TokenCallback | None,
    ) -> Answer:
        """Generate one turn from ``prompt_ids`` at the cache's end."""
