"""The worker: one thread owns the pipeline and serves queued turns in order.

Requests wait in a bounded queue (a full queue is a 503 with Retry-After);
each turn installs its video (from the state cache when it was seen before,
by any client), answers and streams events back through ``Job.send``.
Frames of the live source enter the rolling window (``live_window.py``),
each encoded once, a batch at a time while no request waits (a queued
request goes before the next batch), and all at once before a question about
the live source, which alone prefills the window's LLM prefix.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..chat.assistant_types import Answer
from ..errors import UserError
from ..video.video_state import VideoState
from .api_error import ApiError
from .live_source import LiveFeed
from .live_window import LiveWindow
from .media import VideoRef
from .schemas import ChatRequest
from .served_assistant import LIVE_SHA, ServedAssistant
from .settings import ServeSettings
from .state_cache import CacheKey, Conversation, StateCache, state_bytes
from .turn_watch import TurnWatch

LOG = logging.getLogger("crosslmm_edge.serve")
IDLE_POLL_S = 0.02  # how often an idle worker looks at the live source
# ("start", info) ("token", first token id) ("delta", text) ("done", result) ("error", ApiError)
Event = tuple[str, object]


@dataclass
class Job:
    """One queued turn and the channel its events go back through."""

    request: ChatRequest
    video: VideoRef
    send: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class TurnResult:
    """What a finished turn reports (the app shapes it as OpenAI's JSON)."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    video_reused: bool
    ttft_s: float
    queue_s: float


class Engine:
    """The worker thread, its queue, the state cache and the live window."""

    def __init__(
        self, assistant: ServedAssistant, settings: ServeSettings, live: LiveFeed | None = None
    ) -> None:
        self.assistant, self.settings, self.live = assistant, settings, live
        self.states: StateCache[CacheKey, VideoState] = StateCache(settings.state_cache_bytes)
        # Conversations whose client may come back with another turn: a quarter of the bytes.
        self.conversations: StateCache[tuple, Conversation] = StateCache(
            max(1, settings.state_cache_bytes // 4)
        )
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=settings.queue_size)
        self.window: LiveWindow | None = None
        if live is not None:
            # The feed keeps sample_fps frames a second already: the window takes all it is given.
            frames = max(1, round(settings.live_window_s * live.sample_fps))
            self.window = LiveWindow(assistant.pipeline, frames, self._live_key().state)
        self.live_version = -1  # the window version whose prefix is installed (-1: none)
        self.served = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="serve-worker", daemon=True)

    # -- life -------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (and the live source's reader)."""
        self._thread.start()
        if self.live is not None:
            self.live.start()

    def stop(self) -> None:
        """Let the worker finish its turn and end; stop the live reader."""
        if self.live is not None:
            self.live.stop()
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue ``job``; a full queue is a 503 telling the client when to retry."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(
                503,
                f"the server is busy ({self.settings.queue_size} requests queued); retry shortly",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None

    def status(self) -> dict:
        """Queue, cache and live-source counters for ``/health``."""
        window = self.window
        return {
            "worker_alive": self.alive,
            "queued": self.jobs.qsize(),
            "queue_size": self.settings.queue_size,
            "served": self.served,
            "failed": self.failed,
            "state_cache": self.states.stats(),
            "conversation_cache": self.conversations.stats(),
            "live": None
            if self.live is None or window is None
            else {**self.live.status(), "window_frames": window.window_frames},
        }

    # -- the worker -------------------------------------------------------
    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            self._serve(job)

    def _next_job(self) -> Job | None:
        """The next queued job (None: stop); while none waits, live frames are encoded."""
        while True:
            try:
                return self.jobs.get(timeout=IDLE_POLL_S if self.live else None)
            except queue.Empty:
                self._feed_live()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive()

    def _feed_live(self) -> None:
        """Take the live frames; a failure restarts the window instead of ending the worker."""
        try:
            self._feed_live_batches()
        except Exception:  # e.g. frames of a new resolution in one batch
            LOG.exception("live frames dropped")
            if self.window is not None:
                self.window.reset()

    def _serve(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        started = time.perf_counter()
        try:
            reused = self._use_video(job)
            job.send(("start", {"video_reused": reused, "video_id": job.video.video_id}))
            watch = TurnWatch(
                lambda text: job.send(("delta", text)),
                job.cancelled,
                job.request.stop,
                lambda token: job.send(("token", token)),
            )
            answer = self.assistant.respond(job.request, watch)
        except UserError as exc:
            self.failed += 1
            job.send(("error", ApiError(400, str(exc))))
            return
        except ApiError as exc:
            self.failed += 1
            job.send(("error", exc))
            return
        except Exception:  # a bug must cost one request, not the server
            LOG.exception("turn failed")
            self.failed += 1
            self.assistant.current = None  # its state may be half-changed: install again
            job.send(("error", ApiError(500, "internal error while answering; see the log")))
            return
        self.served += 1
        job.send(("done", self._result(job, answer, watch, reused, started)))

    def _result(
        self, job: Job, answer: Answer, watch: TurnWatch, reused: bool, started: float
    ) -> TurnResult:
        limit = job.request.options.max_new_tokens
        length = watch.cut is None and len(answer.token_ids) >= limit
        first = watch.first_token_at or time.perf_counter()
        return TurnResult(
            text=watch.answer,
            token_ids=answer.token_ids,
            logprobs=answer.logprobs,
            finish_reason="length" if length else "stop",
            prompt_tokens=watch.context_before + watch.prompt_tokens,
            cached_tokens=watch.context_before if reused else 0,
            video_reused=reused,
            ttft_s=first - started,
            queue_s=started - job.queued_at,
        )

    # -- videos -----------------------------------------------------------
    def _use_video(self, job: Job) -> bool:
        """Install the job's video (and kept conversation); whether anything was reused."""
        request, assistant = job.request, self.assistant
        if job.video.is_live:
            return self._use_live(request.system)
        key = assistant.cache_key(job.video.sha256, request.frames, request.system)
        history = request.history
        if assistant.current == key and (not history or assistant.turns == history):
            return True
        self._keep_conversation()
        if history:
            conversation = self.conversations.pop((key, tuple(history)))
            if conversation is not None:
                assistant.resume(key, conversation)
                return True
        if assistant.current == key:
            return True  # the history is replayed after the installed prefix
        state = self.states.get(key)
        if state is not None:
            assistant.install(key, state)
            return True
        assert job.video.path is not None
        state = assistant.encode_video(key, job.video.path, request.frames)
        self.states.put(key, state, state_bytes(state))
        return False

    def _keep_conversation(self) -> None:
        """Keep the current conversation's KV cache before another one replaces it."""
        current = self.assistant.current
        if current is None or current == self._live_key():
            return
        conversation = self.assistant.conversation()
        if conversation is not None:
            size = state_bytes(conversation.state)
            self.conversations.put((current, tuple(conversation.turns)), conversation, size)

    # -- live -------------------------------------------------------------
    def _live_key(self) -> CacheKey:
        return self.assistant.cache_key(LIVE_SHA, None, self.settings.system)

    def _use_live(self, system: str | None) -> bool:
        """Install the window as it is now (its prefix prefilled once per change); reused?"""
        if system != self.settings.system:
            raise UserError("questions about the live source use the server's system prompt")
        assert self.live is not None and self.window is not None  # a "live" url needs --live
        self.window.push(self.live.drain())
        self.window.flush()
        state, key = self.window.state, self._live_key()
        if state is None:
            raise ApiError(503, "the live source has no frames yet", headers={"Retry-After": "1"})
        if self.assistant.current == key and self.live_version == self.window.version:
            return True
        self._keep_conversation()
        self.live_version = -1  # until the install below succeeds
        self.assistant.install(key, state)
        self.live_version = self.window.version
        return False

    def _feed_live_batches(self) -> None:
        """Encode the live frames that arrived, one batch at a time while no request waits."""
        if self.live is None or self.window is None:
            return
        while self.jobs.empty():
            frames = self.live.drain(self.window.batch_frames)
            if not frames:
                return
            self._push_live(frames)

    def _push_live(self, frames: list[np.ndarray]) -> None:
        """Offer ``frames`` to the window (a full batch is encoded; the LLM does not run)."""
        assert self.window is not None  # only called with a live source
        self.window.push(frames)
