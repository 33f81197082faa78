"""The PyTorch reference behind ``ask``/``chat`` on a checkpoint folder.

One video at a time: its frames are encoded once, the video prefix (system
prompt, user header, visual span) is prefilled once, and every question
forks from that cache by truncating back to the prefix length.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..runtime.chat.answer_stream import build_answer, collect_tokens
from ..runtime.chat.assistant_types import Answer, GenerationOptions, TokenCallback
from ..runtime.chat.prompt import PromptBuilder
from ..runtime.chat.turns import TurnTaking
from ..runtime.errors import UserError
from ..runtime.inference.sampling import Sampler
from .checkpoint import load_checkpoint
from .generate import generate, new_cache, prefill_video_prefix
from .kv_cache import KVCache
from .model import VideoFeatures

INITIAL_CACHE = 1024  # positions; the cache grows on demand up to the context limit


class ReferenceAssistant(TurnTaking):
    """``Assistant`` over a CrossLMM checkpoint folder, run by the PyTorch reference."""

    def __init__(
        self,
        checkpoint: str | Path,
        max_context: int | None = None,
        system: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = load_checkpoint(checkpoint, dtype)
        self.config = self.model.config
        limit = max_context or self.config.text_config.max_position_embeddings
        super().__init__(PromptBuilder.from_dir(Path(checkpoint)), system, limit)
        self.video: VideoFeatures | None = None
        self.cache: KVCache | None = None  # narrows TurnTaking's
        self.questions_on_video = 0
        self.setup_s = 0.0  # decode + encode + prefix prefill of the current video

    # -- video ------------------------------------------------------------
    def set_video(self, path: str, num_frames: int | None = None) -> None:
        """Decode, encode and prefill a video file."""
        from ..runtime.video.decode import load_video

        start = time.perf_counter()
        frames = load_video(
            path, num_frames or self.config.num_frames, self.config.vision_config.image_size
        )
        self.set_frames(frames)
        self.setup_s = time.perf_counter() - start

    @torch.no_grad()
    def set_frames(self, pixels: np.ndarray) -> None:
        """Use preprocessed frames float32 [T, 3, S, S] as the current video."""
        size = self.config.vision_config.image_size
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size) or not len(pixels):
            raise UserError(f"frames must be float32 [T, 3, {size}, {size}], got {pixels.shape}")
        prefix_ids = self.prompt.video_prefix_ids(self.system)
        visual_tokens = len(pixels) * self.config.tokens_per_frame
        length = len(prefix_ids) + visual_tokens
        if length > self.max_context:  # refused before the expensive encoding
            raise UserError(
                f"the video prefix needs {length} positions ({len(prefix_ids)} prompt + "
                f"{visual_tokens} visual tokens), more than the context of "
                f"{self.max_context}; use fewer frames"
            )
        start = time.perf_counter()
        dtype = self.model.language_model.model.embed_tokens.weight.dtype
        video = self.model.encode_video(torch.from_numpy(pixels).to(dtype))
        self.cache = new_cache(self.model, min(self.max_context, max(INITIAL_CACHE, 2 * length)))
        prefill_video_prefix(self.model, self.cache, torch.tensor([prefix_ids]), video)
        self.video, self.prefix_length = video, length
        self.questions_on_video = 0
        self.pending_ids = []
        self.setup_s = time.perf_counter() - start

    def _require_video(self) -> None:
        if self.video is None:
            raise UserError("no video: call set_video first")

    def _answer(
        self,
        question: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        on_text: TokenCallback | None,
    ) -> Answer:
        self.check_fits(len(prompt_ids), options.max_new_tokens)
        needed = self.cache.length + len(prompt_ids) + options.max_new_tokens
        self._grow_cache(needed)
        reused = self.questions_on_video > 0
        self.questions_on_video += 1
        sampler = Sampler.for_options(options, [self.config.video_token_id])
        stops = sorted(self.prompt.stop_token_ids)
        steps = generate(
            self.model,
            self.cache,
            self.video.cross,
            prompt_ids,
            options.max_new_tokens,
            stops,
            sampler,
        )
        stream = collect_tokens(steps, self.prompt.decode, stops, on_text)
        self._remember_end(stream.tokens, stops)
        # As in the runtime: the first question waits for the video to be prepared.
        setup_s = 0.0 if reused else self.setup_s
        return build_answer(
            question, stream, self.prompt.decode, stops, reused, options.logprobs, setup_s
        )

    def _grow_cache(self, needed: int) -> None:
        """Reallocate the cache (copying its valid entries) when ``needed`` exceeds it."""
        if needed <= self.cache.capacity:
            return
        bigger = new_cache(self.model, min(self.max_context, max(needed, 2 * self.cache.capacity)))
        bigger.append(self.cache.past())
        self.cache = bigger
