"""``RuntimeAssistant``: the conversation about one video, over a ``Pipeline``.

One video at a time. ``set_video`` decodes, encodes (chunk by chunk) and
prefills the video prefix once; ``ask`` forks from that prefix by truncating
the KV cache (no re-encoding, no re-prefill); ``follow_up`` prefills only the
new turn's tokens. The video state can be saved and loaded, keyed by the
video's content, the frame sampling and the exact artifacts that ran.

Timing: the first question about a freshly prepared video reports a
``ttft_s`` that includes preparing the video (decode, encode, prefix
prefill), since that is what a user waits for; later questions, and
questions on a state loaded from a file, only pay for their own prompt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..inference.kv_cache import KVCache
from ..inference.pipeline import Pipeline
from ..inference.sampling import Sampler
from ..model.contract import LLM, is_v2v
from ..model.limits import check_allocation, kv_cache_bytes
from ..video.state_file import StateSpec
from ..video.video_state import (
    DEFAULT_CHUNK_FRAMES,
    StateKey,
    VideoState,
    append_to_state,
    frame_chunks,
    load_state,
    save_state,
)
from .answer_stream import build_answer, collect_tokens
from .assistant_types import Answer, GenerationOptions, TokenCallback
from .prompt import PromptBuilder
from .turns import TurnTaking


class RuntimeAssistant(TurnTaking[KVCache]):
    """``Assistant`` over an exported package, run by a ``Pipeline``.

    provider: execution provider (cpu, cuda, tensorrt; None = best available).
    precision / backend: which artifacts run (None = the best for the device).
    max_context: a lower context limit than the package's. system: system prompt.
    threads: intra-op threads (0 = backend default). chunk_frames: frames encoded
    per graph run. verify_hashes: check files against the manifest's sha256.
    """

    def __init__(
        self,
        package_dir: str | Path,
        provider: str | None = None,
        max_context: int | None = None,
        system: str | None = None,
        threads: int = 0,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        verify_hashes: bool = True,
        precision: str | None = None,
        backend: str = "onnx",
    ) -> None:
        self.pipeline = Pipeline(
            package_dir, provider, precision, backend, threads, verify_hashes=verify_hashes
        )
        package = self.pipeline.package
        self.dims = self.pipeline.dims
        limit = min(max_context or package.max_context, package.max_context)
        d = self.dims  # the KV cache is allocated from these sizes: bound them first
        check_allocation(
            kv_cache_bytes(
                d.num_layers, limit, d.num_kv_heads, d.head_dim, self.pipeline.kv_dtype.itemsize
            ),
            f"a KV cache of {limit} positions",
            "use a smaller --max-context",
        )
        super().__init__(PromptBuilder.from_dir(package.folder), system, limit)
        self.chunk_frames = chunk_frames
        self.state: VideoState | None = None
        self.cache: KVCache | None = None  # narrows TurnTaking's
        self.text_cross: dict = {}
        self.prefix_reused = False  # the prefix of the current video came from a cache
        self.setup_s = 0.0  # unreported video preparation time, added to the next TTFT
        self.keep_v2v = False  # live video: keep V2V so a changed window can re-prefill
        self.last_prompt_tokens = 0  # tokens the last turn prefilled (its prompt only)
        self.video_source: tuple[str, int] | None = None  # (file, frames asked) of set_video

    @property
    def artifacts(self) -> list[dict[str, str]]:
        """Which artifacts run (role, backend, precision, file), for ``--json``."""
        return self.pipeline.artifacts.describe()

    # -- video ------------------------------------------------------------
    def state_key(self, path: str, num_frames: int | None = None) -> StateKey:
        """The key a state for ``path`` sampled at ``num_frames`` must carry."""
        from ..video.decode import video_fingerprint

        artifacts = self.pipeline.artifacts
        return StateKey(
            video_fingerprint(path),
            num_frames or self.dims.num_frames,
            self.dims.image_size,
            artifacts.label,
            artifacts.sha256(),
        )

    def set_video(
        self, path: str, num_frames: int | None = None, state_file: str | None = None
    ) -> None:
        """Prepare ``path``: from ``state_file`` when given (checked), else encode it."""
        from ..video.decode import iter_video_chunks

        start = time.perf_counter()
        frames = num_frames or self.dims.num_frames
        self._check_frames(frames)
        self.video_source = (path, frames)
        if state_file is not None:
            state = load_state(state_file, self.state_key(path, frames), self._state_spec())
            self._install(state, start)
            return
        chunks = iter_video_chunks(path, frames, self.dims.image_size, self.chunk_frames)
        # The key (a hash of the whole file) is computed only if the state is saved.
        self.set_frames_from_chunks(chunks, None, start)

    def set_frames(self, pixels: np.ndarray, key: StateKey | None = None) -> None:
        """Use preprocessed frames [T, 3, S, S] as the current video, encoded in chunks
        of ``chunk_frames`` as ``set_video`` does (one call over every frame would hold
        all their activations)."""
        self.set_frames_from_chunks(frame_chunks(pixels, self.chunk_frames), key)

    def set_frames_from_chunks(
        self, chunks, key: StateKey | None, start: float | None = None
    ) -> None:
        """Use chunks of preprocessed frames [f, 3, S, S] as the current video."""
        start = time.perf_counter() if start is None else start
        count, embeds, cross = self.pipeline.encode(chunks)
        self._check_frames(count)
        self._install(VideoState(key, count, embeds, cross), start)

    def save_video_state(self, path: str | Path) -> None:
        """Write the current video state and its prefix cache to ``path``."""
        state = self._require_video()
        assert self.cache is not None and self.video_source is not None  # set with the video
        if state.key is None:
            state.key = self.state_key(*self.video_source)
        state.prefix_ids = self.prompt.video_prefix_ids(self.system)
        keys, values = self.cache.prefix_arrays()
        state.prefix_keys = [k[:, : self.prefix_length] for k in keys]
        state.prefix_values = [v[:, : self.prefix_length] for v in values]
        save_state(state, path)

    def _state_spec(self) -> StateSpec:
        """The exact shapes and dtypes a state file must have for this package's run."""
        llm = self.pipeline.artifacts.by_role[LLM]
        package = self.pipeline.package
        dtypes = llm.held_dtypes()  # cross K/V as the state holds it
        return StateSpec(self.dims, dtypes, package.max_frames, self.max_context)

    def _check_frames(self, frames: int) -> None:
        package = self.pipeline.package
        if frames > package.max_frames:
            raise UserError(
                f"{frames} frames requested, but package {package.folder} "
                f"was exported for at most {package.max_frames}"
            )

    def _install(self, state: VideoState, start: float) -> None:
        """Make ``state`` current: reuse its prefix cache or prefill the prefix."""
        prefix_ids = self.prompt.video_prefix_ids(self.system)
        length = self._check_prefix(prefix_ids, state)
        reusable = state.has_prefix and state.prefix_ids == prefix_ids
        if not reusable:
            self._require_v2v(state)  # before touching self: a refusal keeps the old video
        self._upload_text_cross(state)
        if reusable:
            assert state.prefix_keys is not None and state.prefix_values is not None
            self.cache = self.pipeline.cache_from_prefix(
                state.prefix_keys, state.prefix_values, self.max_context
            )
        else:
            self.cache = self._prefill_prefix(state, prefix_ids)
        if self.dims.v2v_scope == "video" and not self.keep_v2v:
            state.cross = state.t2v()  # V2V is read by visual tokens only: done with it
        state.prefix_keys = state.prefix_values = None  # the live cache holds them now
        self.state, self.prefix_length, self.prefix_reused = state, length, reusable
        self.pending_ids = []
        self.setup_s = 0.0 if reusable else time.perf_counter() - start

    def _check_prefix(self, prefix_ids: list[int], state: VideoState) -> int:
        """The video prefix's length; refused when it leaves no room in the context."""
        length = len(prefix_ids) + state.visual_embeds.shape[1]
        if length >= self.max_context:
            raise UserError(
                f"the video prefix needs {length} positions ({len(prefix_ids)} prompt + "
                f"{state.visual_embeds.shape[1]} visual tokens), the context holds "
                f"{self.max_context}; use fewer frames"
            )
        return length

    def _upload_text_cross(self, state: VideoState) -> None:
        """T2V of the whole memory on the device; V2V empty (text chunks have no visual part)."""
        empty = self.pipeline.shapes.no_memory()
        self.text_cross = {name.replace("t2v", "v2v"): empty for name in state.t2v()}
        self.text_cross.update(self.pipeline.upload_memory(state.t2v()))

    @staticmethod
    def _require_v2v(state: VideoState) -> None:
        if not state.v2v():
            raise UserError(
                "this video state holds no prefix cache for the current system "
                "prompt and no V2V memory to rebuild it; recompute it from the video"
            )

    def _prefill_prefix(self, state: VideoState, prefix_ids: list[int]) -> KVCache:
        self._require_v2v(state)
        self._check_prefix(prefix_ids, state)
        cache = self.pipeline.new_cache(self.max_context)
        v2v = self.pipeline.upload_memory(state.v2v())
        self.pipeline.prefill(cache, prefix_ids, state.visual_embeds, {**self.text_cross, **v2v})
        return cache

    # -- live video -------------------------------------------------------
    def start_live(self, pixels: np.ndarray) -> None:
        """Start a live video from its first preprocessed frames [f, 3, S, S]."""
        self.keep_v2v = True
        artifacts = self.pipeline.artifacts
        key = StateKey("live", 0, self.dims.image_size, artifacts.label, artifacts.sha256())
        self.set_frames(pixels, key)

    def append_frames(self, pixels: np.ndarray, refill_prefix: bool = False) -> None:
        """Add frames [f, 3, S, S] after the current ones; only they are encoded.

        With ``v2v_scope="frame"`` they are prefilled as one visual-only chunk
        after the cached prefix, nothing earlier is recomputed (the header
        tokens keep the memory they saw when they were prefilled). With
        ``"video"``, or ``refill_prefix``, the prefix is prefilled again from
        the kept embeddings (the LLM only, no re-encoding), which equals a
        fresh start on the same frames.
        """
        state = self._require_video()
        self._check_frames(state.num_frames + pixels.shape[0])
        start = time.perf_counter()
        embeds, cross = self.pipeline.encode_frames(pixels)
        append_to_state(state, embeds, cross, pixels.shape[0])
        self.reset()
        self._upload_text_cross(state)
        if self.dims.v2v_scope != "frame" or refill_prefix:
            self._reprefill(state)
        else:
            assert self.cache is not None  # set with the video
            self.check_fits(embeds.shape[1], 0)
            v2v = self.pipeline.upload_memory({n: v for n, v in cross.items() if is_v2v(n)})
            self.pipeline.prefill(self.cache, [], embeds, {**self.text_cross, **v2v})
            self.prefix_length, self.prefix_reused = self.cache.length, False
        self.setup_s += time.perf_counter() - start

    def keep_last_frames(self, count: int, refill_prefix: bool = True) -> None:
        """Drop all but the last ``count`` frames and prefill the prefix again (no re-encoding).

        ``refill_prefix=False`` leaves that to an ``append_frames(...,
        refill_prefix=True)`` that follows at once (one prefill instead of two).
        """
        if count < 1:
            raise UserError(f"keep at least 1 frame, not {count}")
        state = self._require_video()
        drop = state.num_frames - count
        if drop <= 0:
            return
        start = time.perf_counter()
        p, n = self.dims.tokens_per_frame, self.dims.patches_per_frame
        state.visual_embeds = state.visual_embeds[:, drop * p :]
        state.cross = {name: value[:, drop * n :] for name, value in state.cross.items()}
        state.num_frames = count
        self._upload_text_cross(state)
        if refill_prefix:
            self._reprefill(state)
        self.setup_s += time.perf_counter() - start

    def _reprefill(self, state: VideoState) -> None:
        prefix_ids = self.prompt.video_prefix_ids(self.system)
        self.cache = self._prefill_prefix(state, prefix_ids)
        self.prefix_length, self.prefix_reused = self.cache.length, False
        self.pending_ids = []

    def _require_video(self) -> VideoState:
        if self.state is None:
            raise UserError("no video: call set_video first")
        return self.state

    # -- questions --------------------------------------------------------
    def _answer(
        self,
        question: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        on_text: TokenCallback | None,
    ) -> Answer:
        assert self.cache is not None  # _require_video came first
        self.check_fits(len(prompt_ids), options.max_new_tokens)
        self.last_prompt_tokens = len(prompt_ids)
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
        stream = collect_tokens(self._watched(steps), self.prompt.decode, stops, on_text)
        setup_s, self.setup_s, self.prefix_reused = self.setup_s, 0.0, True
        self._remember_end(stream.tokens, stops)
        return build_answer(
            question, stream, self.prompt.decode, stops, reused, options.logprobs, setup_s
        )

    def _watched(self, steps: Iterator[tuple[int, float]]) -> Iterator[tuple[int, float]]:
        """The turn's (token, logprob) steps, before any is generated (the server's hook:
        it ends them early for a stop string or a client that left)."""
        return steps
