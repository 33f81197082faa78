"""``RuntimeAssistant`` as the server's worker drives it: many videos, many conversations.

The worker keeps encoded videos in a cache and installs one before each
turn (its prefix KV cache is copied back, nothing is recomputed). A
conversation whose earlier turns are still in the KV cache continues with
only the new question prefilled, as ``chat`` does; any other history is
replayed as text after the cached video prefix.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

from ..chat.assistant import RuntimeAssistant
from ..chat.assistant_types import Answer, TokenCallback
from ..inference.sampling import GenerationOptions
from ..video.video_state import StateKey, VideoState
from .schemas import ChatRequest
from .state_cache import CacheKey, Conversation
from .turn_watch import TurnWatch

LIVE_SHA = "live"


class ServedAssistant(RuntimeAssistant):
    """A ``RuntimeAssistant`` that switches between cached video states."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        artifacts = self.pipeline.artifacts
        self.artifact_label, self.artifact_sha256 = artifacts.label, artifacts.sha256()
        self.current: CacheKey | None = None  # the video installed now
        self.turns: list[tuple[str, str]] | None = None  # turns in the cache; None: unknown
        self.watch: TurnWatch | None = None

    def cache_key(self, sha256: str, frames: int | None, system: str | None) -> CacheKey:
        """The key of a video's state (live: frames 0) for this package's artifacts."""
        count = 0 if sha256 == LIVE_SHA else (frames or self.dims.num_frames)
        state = StateKey(
            sha256, count, self.dims.image_size, self.artifact_label, self.artifact_sha256
        )
        return CacheKey(state, system)

    # -- videos -----------------------------------------------------------
    def encode_video(self, key: CacheKey, path: Path, frames: int | None) -> VideoState:
        """Decode, encode and prefill ``path``; its state with the prefix cache."""
        self.current, self.system, self.keep_v2v = None, key.system, False
        self.set_video(str(path), frames)
        self._require_video().key = key.state
        self._now_current(key)
        return self.snapshot()

    def install(self, key: CacheKey, state: VideoState) -> None:
        """Make ``state`` current: its prefix cache is copied, or prefilled when it has none
        (the live window); ``state`` itself is left as it was."""
        self.current, self.system, self.keep_v2v = None, key.system, False
        self._install(dataclasses.replace(state, cross=dict(state.cross)), time.perf_counter())
        self._now_current(key)

    def snapshot(self) -> VideoState:
        """The current state with a host copy of its prefix cache (the conversation ends)."""
        self.reset()
        self.turns = []
        return self._copy_state()

    def conversation(self) -> Conversation | None:
        """The current conversation with a host copy of its whole KV cache (None: no turn)."""
        if not self.turns:
            return None
        return Conversation(list(self.turns), list(self.pending_ids), self._copy_state())

    def _copy_state(self) -> VideoState:
        """The current state with host copies of the KV cache's valid entries."""
        state = self._require_video()
        assert self.cache is not None  # set with the video
        keys, values = self.cache.prefix_arrays()
        prefix_ids = self.prompt.video_prefix_ids(self.system)
        cross = dict(state.cross)
        return VideoState(
            state.key, state.num_frames, state.visual_embeds, cross, prefix_ids, keys, values
        )

    def resume(self, key: CacheKey, conversation: Conversation) -> None:
        """Install a kept conversation: its turns continue without being prefilled again."""
        self.install(key, conversation.state)
        self.pending_ids, self.turns = list(conversation.pending_ids), list(conversation.turns)

    def _now_current(self, key: CacheKey) -> None:
        self.current, self.turns = key, []

    # -- turns ------------------------------------------------------------
    def respond(self, request: ChatRequest, watch: TurnWatch) -> Answer:
        """Answer the request's question after its history, reusing cached turns."""
        self.watch = watch
        history, question, options = request.history, request.question, request.options
        kept, self.turns = self.turns, None  # unknown until the turn ends (it may fail)
        try:
            if not history:
                answer = self.ask(question, options, watch.on_text)
            elif kept == history:
                answer = self.follow_up(question, options, watch.on_text)
            else:
                answer = self._replay(history, question, options, watch.on_text)
            watch.finish()
        finally:
            self.watch = None
        self.turns = None if watch.stopped_early else [*history, (question, watch.answer)]
        return answer

    def _replay(
        self,
        history: list[tuple[str, str]],
        question: str,
        options: GenerationOptions,
        on_text: TokenCallback,
    ) -> Answer:
        """Prefill the earlier turns as text after the video prefix, then answer."""
        self.reset()
        ids = self.prompt.first_question_ids(history[0][0], self.system)
        later = [q for q, _ in history[1:]] + [question]
        for (_, answer), next_question in zip(history, later, strict=True):
            ids += self.prompt._encode([(answer, True)])
            ids += self.prompt.next_turn_ids(next_question, self.system)
        return self._answer(question, ids, options, on_text)

    def _watched(self, steps: Iterator[tuple[int, float]]) -> Iterator[tuple[int, float]]:
        """Pass the turn's tokens through the request's ``TurnWatch`` (stop strings, cancel)."""
        watch = self.watch
        if watch is None:
            return steps
        assert self.cache is not None  # set with the video
        # Generation is lazy: the cache does not hold the prompt yet.
        watch.context_before, watch.prompt_tokens = self.cache.length, self.last_prompt_tokens
        return watch.watched(steps)
