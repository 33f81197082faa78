"""The three graphs of a package on one backend: encode frames, prefill, decode.

Read this first. ``Pipeline`` opens a package, picks one artifact per role
for the backend and precision asked for, loads the sessions, and offers the
three steps of CrossLMM inference; the conversation on top of it (questions,
turns, video states) lives in ``runtime/chat/assistant.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..backends.base import Backend, DeviceArray, GraphSession, open_backend
from ..errors import UserError
from ..model.contract import (
    LLM,
    POOLING,
    ROLES,
    SEQLENS_INPUT,
    VISION_ENCODER,
    TensorSpec,
    is_v2v,
    past_names,
)
from ..package.graph_contract import check_session
from ..package.loader import ArtifactSet, choose_artifacts, open_package
from ..video.video_state import encode_chunks, encode_frames
from .generation import (
    DEFAULT_MAX_CHUNK_TOKENS,
    DEFAULT_MAX_SCORE_BYTES,
    ChunkShapes,
    CrossFeeds,
    piece_tokens,
    run_chunk,
    stream_tokens,
)
from .kv_cache import KVCache, cache_from_prefix
from .sampling import Sampler


class Pipeline:
    """Sessions of one artifact set, and the steps that run them.

    backend: artifact backend ("onnx"; "tensorrt" for engines). precision:
    fp32/fp16/int8 (None: the best present for the device). provider: ONNX
    Runtime execution provider (None: best available). threads: intra-op
    threads (0: backend default). verify_hashes: check files against the
    manifest's sha256 as they load. huge_pages: ask the backend for huge pages
    under the loaded weights (``Backend.use_huge_pages``); None: when the LLM is INT4.
    """

    def __init__(
        self,
        package_dir: str | Path,
        provider: str | None = None,
        precision: str | None = None,
        backend: str = "onnx",
        threads: int = 0,
        verify_hashes: bool = True,
        engine: Backend | None = None,
        max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS,
        max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES,
        huge_pages: bool | None = None,
    ) -> None:
        self.max_chunk_tokens, self.max_score_bytes = max_chunk_tokens, max_score_bytes
        self.package = open_package(package_dir, verify=False)
        self.dims = self.package.dims
        self.backend = engine or open_backend(backend, provider, threads)
        manifest = self.package.manifest
        self.artifacts: ArtifactSet = choose_artifacts(
            manifest, backend, precision, self.backend.device
        )
        llm_inputs = {t.name: t for t in self.artifacts.by_role[LLM].inputs}
        self.shared_kv = SEQLENS_INPUT in llm_inputs  # GroupQueryAttention: head-major cache
        self.kv_spare_rows = self.artifacts.by_role[LLM].kv_spare_rows
        if self.shared_kv and self.backend.device != "cpu":
            _refuse_cpu_attention(self.artifacts.by_role[LLM].label, llm_inputs, self.backend)
        self.sessions: dict[str, GraphSession] = {}
        for role in ROLES:
            artifact = self.artifacts.by_role[role]
            path = self.package.path(artifact, verify_hashes)
            dims = manifest.graphs[role].dims
            checked = [ref.sha256 for ref in artifact.files()] if verify_hashes else []
            self.sessions[role] = self.backend.load(path, role, artifact.inputs, dims, checked)
            check_session(role, artifact, self.sessions[role])  # the right graph for the role
        # Measured on the CPU (docs/performance.md#huge-pages): INT4 decode 1.09-1.17x for
        # 0.1 s at open; INT8 1.12x for 2.2-2.4 s, fp32 1.04x for 3.4-4.4 s: those do not ask.
        if huge_pages is None:
            huge_pages = self.artifacts.by_role[LLM].precision == "int4"
        self.huge_page_bytes = self.backend.use_huge_pages() if huge_pages else 0
        llm = self.sessions[LLM].inputs
        # Activations and the cross K/V in the graph's float type; the self-attention cache
        # in its own (a float16 cache beside float32 activations in onnx/int4).
        self.kv_dtype = np.dtype(llm[past_names(0)[0]].dtype)
        self.shapes = ChunkShapes(
            self.dims.hidden_size,
            self.dims.num_kv_heads,
            self.dims.head_dim,
            np.dtype(llm["visual_embeds"].dtype),
        )
        bind = self.artifacts.by_role[LLM].dequantize_on_bind.items()
        # [kvh, 1]: broadcasts over memory [1, T, kvh, hd]
        self._bind_scales = {n: np.asarray(v, self.shapes.dtype)[:, None] for n, v in bind}

    # -- vision -----------------------------------------------------------
    def encode(self, chunks: Iterable[np.ndarray]) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
        """Chunks of frames [f, 3, S, S] -> (frames, visual embeds, cross K/V by name)."""
        return encode_chunks(self.sessions[VISION_ENCODER], self.sessions[POOLING], chunks)

    def encode_frames(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Frames [f, 3, S, S] -> visual embeds [1, f·P, D] and cross K/V."""
        return encode_frames(self.sessions[VISION_ENCODER], self.sessions[POOLING], pixels)

    # -- LLM --------------------------------------------------------------
    def new_cache(self, capacity: int) -> KVCache:
        """An empty KV cache of ``capacity`` positions in the backend's memory."""
        d = self.dims
        return KVCache.empty(
            d.num_layers,
            capacity,
            d.num_kv_heads,
            d.head_dim,
            self.kv_dtype,
            self.backend.zeros,
            self.shared_kv,
            self.kv_spare_rows,
        )

    def cache_from_prefix(
        self, keys: Sequence[np.ndarray], values: Sequence[np.ndarray], capacity: int
    ) -> KVCache:
        """A cache of ``capacity`` positions holding the host prefix (``prefix_arrays``' layout)."""
        upload, shared, spare = self.backend.upload, self.shared_kv, self.kv_spare_rows
        return cache_from_prefix(keys, values, capacity, upload, shared, spare, self.kv_dtype)

    def upload(self, array: np.ndarray) -> DeviceArray:
        return self.backend.upload(array)

    def memory_feeds(self, cross: CrossFeeds) -> CrossFeeds:
        """Cross K/V as the LLM graph takes it: the int8 host memory of the artifact's
        ``dequantize_on_bind`` inputs dequantized (x · scale per KV head), the rest as is
        (``cross`` itself when the artifact dequantizes nothing).

        Call it once per video (``upload_memory``) so no step dequantizes again.
        """
        if not self._bind_scales:  # every artifact but onnx/int4: prefill stays as it was
            return cross
        return {name: self._dequantized(name, value) for name, value in cross.items()}

    def upload_memory(self, cross: Mapping[str, np.ndarray]) -> dict[str, DeviceArray]:
        """``memory_feeds`` of host memory, on the device."""
        return {name: self.upload(self._dequantized(name, value)) for name, value in cross.items()}

    def _dequantized(self, name: str, value):
        scales = self._bind_scales.get(name)
        if scales is None or not isinstance(value, np.ndarray) or value.dtype != np.int8:
            return value
        return value.astype(self.shapes.dtype) * scales  # [1, T, kvh, hd]

    def prefill(
        self,
        cache: KVCache,
        input_ids: Sequence[int],
        visual_embeds: np.ndarray,
        cross: CrossFeeds,
        max_chunk_tokens: int | None = None,
    ) -> np.ndarray:
        """``[text ; visual]`` at the cache's end, in pieces; the last logits [V].

        A long chunk runs as text pieces then frame-aligned visual pieces of at
        most ``max_chunk_tokens`` (default ``self.max_chunk_tokens``) positions,
        fewer where one attention's scores would pass ``self.max_score_bytes``
        (see ``piece_tokens``). Causal attention and the per-token
        cross-attention make the pieces exact: each visual piece reads the V2V
        memory of its own frames (``"frame"`` scope) or of all of them (``"video"``).
        """
        p, n = self.dims.tokens_per_frame, self.dims.patches_per_frame
        limit = max(max_chunk_tokens or self.max_chunk_tokens, p)
        cross = self.memory_feeds(cross)
        llm = self.sessions[LLM]
        memory = _memory_rows(cross)
        total = len(input_ids) + visual_embeds.shape[1]
        if total <= self.piece_tokens(cache.length, memory, limit):
            return run_chunk(llm, cache, input_ids, visual_embeds, cross)
        logits: np.ndarray | None = None
        no_visual = self.shapes.no_visual()
        text_cross = self._text_only(cross)
        ids, start = list(input_ids), 0
        while start < len(ids):  # [V] of the last piece is what counts
            size = self.piece_tokens(cache.length, memory, limit)
            logits = run_chunk(llm, cache, ids[start : start + size], no_visual, text_cross)
            start += size
        frames, first = visual_embeds.shape[1] // p, 0
        if self.dims.v2v_scope == "frame":
            memory = limit // p * n  # a piece reads its own frames' memory: at most this
        while first < frames:
            last = min(frames, first + max(1, self.piece_tokens(cache.length, memory, limit) // p))
            piece = visual_embeds[:, first * p : last * p]  # [1, f·P, D]
            logits = run_chunk(llm, cache, [], piece, self._piece_cross(cross, first, last, n))
            first = last
        assert logits is not None  # total > one piece's positions: at least one piece ran
        return logits

    def piece_tokens(self, past: int, memory: int, limit: int) -> int:
        """Positions of the next prefill piece (``generation.piece_tokens``)."""
        return piece_tokens(self.dims.num_heads, past, memory, limit, self.max_score_bytes)

    def _text_only(self, cross: CrossFeeds) -> dict:
        empty = self.shapes.no_memory()
        return {name: empty if is_v2v(name) else value for name, value in cross.items()}

    def _piece_cross(self, cross: CrossFeeds, first: int, last: int, n: int) -> dict:
        if self.dims.v2v_scope != "frame":
            return dict(cross)
        return {
            name: _rows(value, first * n, last * n) if is_v2v(name) else value
            for name, value in cross.items()
        }

    def generate(
        self,
        cache: KVCache,
        text_cross: CrossFeeds,
        prompt_ids: Sequence[int],
        sampler: Sampler,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        with_logprobs: bool = True,
    ) -> Iterator[tuple[int, float]]:
        """Prefill a text prompt, then decode; yields (token, log-probability or NaN)."""
        return stream_tokens(
            self.sessions[LLM],
            cache,
            self.memory_feeds(text_cross),
            self.shapes,
            prompt_ids,
            sampler,
            max_new_tokens,
            stop_ids,
            with_logprobs,
        )


def _refuse_cpu_attention(label: str, inputs: Mapping[str, TensorSpec], backend: Backend) -> None:
    """A ``UserError`` for a ``GroupQueryAttention`` LLM of float32 activations on a GPU.

    ONNX Runtime registers that op's CUDA kernel for fp16 and bf16 only, so over a
    float32 cache it would run on the CPU, its cache copied off and back onto the GPU
    every step; the float16-cache form (Casts around the op) was measured on the CPU only.
    """
    if inputs["visual_embeds"].dtype != "float32":
        return
    provider = backend.provider
    raise UserError(
        f"{label}: its decoder attention is ONNX Runtime's GroupQueryAttention in a float32 "
        f"graph, which runs on the CPU provider only (the op's CUDA kernel takes fp16); run it "
        f"with --provider cpu, or quantize with --attention standard for --provider {provider}"
    )


def _memory_rows(cross: CrossFeeds) -> int:
    """Rows of the longest cross-attention memory fed (0 for a text-only model run)."""
    return max((value.shape[1] for value in cross.values()), default=0)


def _rows(value: np.ndarray | DeviceArray, start: int, stop: int) -> np.ndarray | DeviceArray:
    """Positions ``start:stop`` along axis 1 of a host or device array (no copy)."""
    if isinstance(value, DeviceArray):
        return value.rows(start, stop)
    return value[:, start:stop]
