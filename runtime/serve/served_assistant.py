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
from pathlib import Path

from ..chat.answer_stream import build_answer, collect_tokens
from ..chat.assistant import RuntimeAssistant
from ..chat.assistant_types import Answer, GenerationOptions, TokenCallback
from ..core.sampling import Sampler
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

    def install(self, key: CacheKey, state: VideoState, live: bool = False) -> None:
        """Make a cached ``state`` current (its prefix cache is copied, not recomputed)."""
        self.current, self.system, self.keep_v2v = None, key.system, live
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
        try:
            if not history:
                answer = self.ask(question, options)
            elif self.turns == history:
                answer = self.follow_up(question, options)
            else:
                answer = self._replay(history, question, options)
        finally:
            self.watch = None
        self.turns = None if watch.stopped_early else [*history, (question, watch.answer)]
        return answer

    def _replay(
        self, history: list[tuple[str, str]], question: str, options: GenerationOptions
    ) -> Answer:
        """Prefill the earlier turns as text after the video prefix, then answer."""
        self.reset()
        ids = self.prompt.first_question_ids(history[0][0], self.system)
        later = [q for q, _ in history[1:]] + [question]
        for (_, answer), next_question in zip(history, later, strict=True):
            ids += self.prompt._encode([(answer, True)])
            ids += self.prompt.next_turn_ids(next_question, self.system)
        return self._answer(question, ids, options, None)

    def _answer(
        self,
        question: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        on_text: TokenCallback | None,
    ) -> Answer:
        """The base turn, with its tokens passed through the request's ``TurnWatch``.

        The watch streams the text, ends the turn at a stop string or when the
        client has gone; without one this is ``RuntimeAssistant``'s turn.
        """
        watch = self.watch
        if watch is None:
            return super()._answer(question, prompt_ids, options, on_text)
        assert self.cache is not None  # set with the video
        self.check_fits(len(prompt_ids), options.max_new_tokens)
        watch.context_before, watch.prompt_tokens = self.cache.length, len(prompt_ids)
        reused = self.prefix_reused
        sampler = Sampler.for_options(options, [self.dims.video_token_id])
        stops = sorted(self.prompt.stop_token_ids)
        steps = self.pipeline.generate(
            self.cache,
            self.text_cross,
            prompt_ids,
            sampler,
            options.max_new_tokens,
            stops,
            options.logprobs,
        )
        stream = collect_tokens(watch.watched(steps), self.prompt.decode, stops, watch.on_text)
        watch.finish()
        setup_s, self.setup_s, self.prefix_reused = self.setup_s, 0.0, True
        self._remember_end(stream.tokens, stops)
        return build_answer(
            question, stream, self.prompt.decode, stops, reused, options.logprobs, setup_s
        )
