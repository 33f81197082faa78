"""Chained check: the runtime's pipeline generates the same greedy tokens as PyTorch.

vision → pooling → prefill of ``[prefix text ; video]`` → a text-only
question chunk → ``steps`` greedy decode steps, run by the runtime's own
``Pipeline`` (backend sessions, preallocated KV cache, ``run_chunk``), so
what is verified is what users run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.inference.compare import tolerance_for
from ..runtime.inference.pipeline import Pipeline
from ..runtime.model.contract import is_v2v
from .generate import decode_step, new_cache, prefill, prefill_video_prefix
from .model import CrossLMM


@dataclass(frozen=True)
class ChainResult:
    frames: int
    onnx_tokens: list[int]
    torch_tokens: list[int]
    max_logit_error: float  # over every step, while the tokens agree
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.onnx_tokens == self.torch_tokens and self.max_logit_error <= self.tolerance

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return (
            f"chain           frames={self.frames}, {len(self.torch_tokens) - 1} decode steps"
            f"{'':<7} logits max_abs={self.max_logit_error:.2e} onnx={self.onnx_tokens} "
            f"torch={self.torch_tokens} {status}"
        )


def runtime_greedy(
    pipeline: Pipeline, pixels: np.ndarray, prefix: list[int], question: list[int], steps: int
) -> list[np.ndarray]:
    """The logits [V] of the question chunk, then of ``steps`` greedy decode steps."""
    _, embeds, cross = pipeline.encode([pixels])
    capacity = len(prefix) + embeds.shape[1] + len(question) + steps + 1
    cache = pipeline.new_cache(capacity)
    pipeline.prefill(cache, prefix, embeds, cross)
    empty = pipeline.shapes.no_memory()
    text_cross = {name: empty if is_v2v(name) else value for name, value in cross.items()}
    no_visual = pipeline.shapes.no_visual()
    # Copies: a session may reuse its logits buffer on the next run.
    history = [np.array(pipeline.prefill(cache, question, no_visual, text_cross))]
    while len(history) <= steps:
        token = int(np.argmax(history[-1]))
        history.append(np.array(pipeline.prefill(cache, [token], no_visual, text_cross)))
    return history


@torch.no_grad()
def torch_greedy(
    model: CrossLMM, pixels: torch.Tensor, prefix: torch.Tensor, question: torch.Tensor, steps: int
) -> list[np.ndarray]:
    """The reference, with ``generate.py``'s prefix prefill, prefill and decode step."""
    video = model.encode_video(pixels)
    length = prefix.shape[1] + video.visual_embeds.shape[1] + question.shape[1] + steps + 1
    cache = new_cache(model, length)
    prefill_video_prefix(model, cache, prefix, video)
    history = [prefill(model, cache, question, video.cross)[0, -1].float()]
    while len(history) <= steps:
        token = history[-1].argmax().reshape(1, 1)
        history.append(decode_step(model, cache, token, video.cross)[0].float())
    return [logits.numpy() for logits in history]


def verify_chain(
    pipeline: Pipeline, model: CrossLMM, steps: int = 20, seed: int = 0
) -> ChainResult:
    """Greedy tokens of the runtime pipeline and of PyTorch on one random video."""
    config = model.config
    frames = pipeline.package.max_frames
    v, t = config.vision_config, config.text_config
    generator = torch.Generator().manual_seed(seed)
    dtype = model.projector.linear_1.weight.dtype
    pixels = torch.randn(frames, 3, v.image_size, v.image_size, generator=generator).to(dtype)
    prefix = torch.randint(0, t.vocab_size, (1, 6), generator=generator)
    question = torch.randint(0, t.vocab_size, (1, 4), generator=generator)
    expected = torch_greedy(model, pixels, prefix, question, steps)
    actual = runtime_greedy(
        pipeline, pixels.numpy(), prefix[0].tolist(), question[0].tolist(), steps
    )
    onnx_tokens = [int(np.argmax(logits)) for logits in actual]
    torch_tokens = [int(np.argmax(logits)) for logits in expected]
    agree = next(
        (i for i, (a, b) in enumerate(zip(onnx_tokens, torch_tokens, strict=True)) if a != b),
        len(torch_tokens),
    )
    errors = [
        float(np.abs(a - b).max())
        for a, b in zip(actual[: agree + 1], expected[: agree + 1], strict=True)
    ]
    tolerance = min(tolerance_for(pipeline.artifacts.precision, logits) for logits in expected)
    return ChainResult(frames, onnx_tokens, torch_tokens, max(errors), tolerance)
