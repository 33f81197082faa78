"""Chained check: the three ONNX graphs generate the same greedy tokens as PyTorch.

vision → pooling → prefill of ``[prefix text ; video]`` → a text-only
question chunk → ``steps`` greedy decode steps, with the KV cache kept the
way the runtime keeps it (each chunk's new entries appended after the past).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crosslmm_edge.export.generate import decode_step, new_cache, prefill, prefill_video_prefix
from crosslmm_edge.export.model import CrossLMM
from crosslmm_edge.runtime.manifest import Manifest

# Allowed max abs error per output: atol + rtol · max|reference| (fp16 keeps ~3 digits).
TOLERANCE = {"fp32": (1e-4, 0.0), "fp16": (1e-2, 1e-2)}


def tolerance_for(precision: str, reference: np.ndarray) -> float:
    """The max abs error allowed for an output whose PyTorch value is ``reference``."""
    atol, rtol = TOLERANCE[precision]
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return atol + rtol * scale


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


class OnnxChain:
    """The three graphs in ONNX Runtime with a growing (concatenated) KV cache."""

    def __init__(self, pkg: Path, manifest: Manifest) -> None:
        import onnxruntime as ort

        def session(role: str) -> ort.InferenceSession:
            path = pkg / manifest.graphs[role].artifact("onnx").file
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        self.vision, self.pooling, self.llm = (
            session("vision_encoder"),
            session("pooling"),
            session("llm"),
        )
        self.names = [i.name for i in self.llm.get_inputs()]
        self.past: list[np.ndarray] = []
        self.cross: list[np.ndarray] = []

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Frames -> visual embeddings; keeps the cross K/V for later chunks."""
        features = self.vision.run(None, {"pixel_values": pixels})[0]
        embeds, *self.cross = self.pooling.run(None, {"patch_features": features})
        return embeds

    def run(self, input_ids: np.ndarray, visual: np.ndarray) -> np.ndarray:
        """One chunk; returns the last position's logits [V]."""
        past_len = self.past[0].shape[1]
        length = input_ids.shape[1] + visual.shape[1]
        feeds = [input_ids, visual, np.arange(past_len, past_len + length)[None], *self.past]
        for j in range(0, len(self.cross), 4):
            v2v = (
                self.cross[j : j + 2]
                if visual.shape[1]
                else [c[:, :0] for c in self.cross[j : j + 2]]
            )
            feeds += [*v2v, *self.cross[j + 2 : j + 4]]
        logits, *present = self.llm.run(None, dict(zip(self.names, feeds, strict=True)))
        self.past = [
            np.concatenate([p, n], axis=1) for p, n in zip(self.past, present, strict=True)
        ]
        return logits[0] if logits.ndim == 2 else logits[0, -1]  # all-logits graphs: [1, L, V]

    def greedy(
        self,
        pixels: np.ndarray,
        prefix: np.ndarray,
        question: np.ndarray,
        steps: int,
        empty_kv: np.ndarray,
    ) -> list[np.ndarray]:
        """The logits [V] of the question chunk, then of ``steps`` greedy decode steps."""
        layers = sum(n.startswith("past_key.") for n in self.names)
        self.past = [empty_kv] * (2 * layers)
        embeds = self.encode(pixels)
        no_visual = embeds[:, :0]
        self.run(prefix, embeds)
        history = [self.run(question, no_visual)]
        while len(history) <= steps:
            token = np.array([[np.argmax(history[-1])]], dtype=np.int64)
            history.append(self.run(token, no_visual))
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
    pkg: Path, manifest: Manifest, model: CrossLMM, steps: int = 20, seed: int = 0
) -> ChainResult:
    """Greedy tokens of the chained graphs and of PyTorch on one random video."""
    config = model.config
    frames = manifest.limits["max_frames"]
    v, t = config.vision_config, config.text_config
    generator = torch.Generator().manual_seed(seed)
    dtype = model.projector.linear_1.weight.dtype
    pixels = torch.randn(frames, 3, v.image_size, v.image_size, generator=generator).to(dtype)
    prefix = torch.randint(0, t.vocab_size, (1, 6), generator=generator)
    question = torch.randint(0, t.vocab_size, (1, 4), generator=generator)
    expected = torch_greedy(model, pixels, prefix, question, steps)
    empty = np.zeros((1, 0, t.num_key_value_heads, t.head_dim), dtype=pixels.numpy().dtype)
    chain = OnnxChain(pkg, manifest)
    actual = chain.greedy(pixels.numpy(), prefix.numpy(), question.numpy(), steps, empty)
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
    tolerance = min(tolerance_for(manifest.precision, logits) for logits in expected)
    return ChainResult(frames, onnx_tokens, torch_tokens, max(errors), tolerance)
