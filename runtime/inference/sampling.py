"""Choosing the next token from logits, in numpy (greedy or sampled with a seed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class GenerationOptions:
    """Decoding settings of a request (the assistants' protocol takes them); greedy at 0."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: bool = False


@dataclass
class Sampler:
    """Greedy when ``temperature <= 0``; else temperature, top-k, then top-p.

    ``banned_ids`` (the video placeholder) can never be chosen. One sampler
    is one random stream: the same seed gives the same tokens.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    banned_ids: Sequence[int] = ()

    @classmethod
    def for_options(cls, options: GenerationOptions, banned_ids: Sequence[int]) -> Sampler:
        """The sampler of a request's decoding settings."""
        return cls(options.temperature, options.top_p, options.top_k, options.seed, banned_ids)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and np.isfinite(self.top_p)):
            raise ValueError(f"temperature and top_p must be finite: {self}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        self.rng = np.random.default_rng(self.seed)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """float32 logits [V] with the banned ids at -inf (a copy)."""
        masked = np.array(logits, dtype=np.float32).reshape(-1)
        masked[list(self.banned_ids)] = -np.inf
        return masked

    def choose(self, logits: np.ndarray, with_logprob: bool = True) -> tuple[int, float]:
        """Pick a token from raw logits [V]; return it and its log-probability.

        The log-probability is the model's own: full-vocabulary softmax of the
        raw logits, before masking and temperature, as the reference reports it.
        Without ``with_logprob`` it is NaN and costs nothing (a greedy step is
        then one argmax over the vocabulary, no copy).
        """
        flat = np.asarray(logits).reshape(-1)
        token = self._greedy(flat) if self.temperature <= 0 else self._sample(self.mask(flat))
        return token, float(log_softmax(flat)[token]) if with_logprob else float("nan")

    def _greedy(self, logits: np.ndarray) -> int:
        token = int(np.argmax(logits))
        if token in self.banned_ids:  # rare: only then pay for the masked copy
            token = int(np.argmax(self.mask(logits)))
        return token

    def _sample(self, logits: np.ndarray) -> int:
        # Shift by the max in float64 first: a tiny temperature must not overflow to inf.
        x = logits.astype(np.float64)
        scaled = (x - x.max()) / self.temperature
        if self.top_k > 0:
            kth = np.sort(scaled)[-min(self.top_k, scaled.size)]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(log_softmax(scaled))
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order]
            # Keep the smallest head whose mass reaches top_p (always the top token).
            keep = np.cumsum(sorted_probs) - sorted_probs < self.top_p
            probs = np.zeros_like(probs)
            probs[order[keep]] = sorted_probs[keep]
        probs = probs.astype(np.float64)
        return int(self.rng.choice(probs.size, p=probs / probs.sum()))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax of a 1-D array, in float64 for stable log-probabilities."""
    x = logits.astype(np.float64)
    top = np.max(x)
    return x - top - np.log(np.sum(np.exp(x - top)))
