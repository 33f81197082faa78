"""Drift metrics between a reference and a test tensor, accumulated over many runs.

Torch-free (numpy only): ``drift`` compares packages as they run. Per stage:
the lowest per-token cosine, the signal-to-quantization-noise ratio over all
values, the relative L2 error, the largest absolute error, and the relative
L2 error per frame index (does the error grow along the video?). The frame
index is the frame's place within its own video: frame 3 of every video adds
to the same entry. Per token distribution: KL divergence and top-1 agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StageDrift:
    """Running error statistics of one stage; ``add`` a pair of arrays at a time."""

    signal: float = 0.0  # sum ref²
    noise: float = 0.0  # sum (ref - test)²
    max_abs: float = 0.0
    cosine_min: float = 1.0
    frame_signal: list[float] = field(default_factory=list)
    frame_noise: list[float] = field(default_factory=list)

    def add(self, ref: np.ndarray, test: np.ndarray, frames: int = 0) -> None:
        """Compare ``test`` with ``ref`` ([..., features]; the cosine is per feature row).

        ``frames`` > 0 also splits the error into that many frames: the arrays
        must then be frame-major (frame ``f`` is the ``f``-th contiguous slice
        of the values, as in [T, N, D], [1, T·P, D] or [1, T·N, heads, D]).
        """
        if ref.shape != test.shape:
            raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
        if ref.size == 0:
            return
        ref64, test64 = ref.astype(np.float64), test.astype(np.float64)
        error = ref64 - test64
        self.signal += float(np.sum(ref64**2))
        self.noise += float(np.sum(error**2))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(error))))
        self.cosine_min = min(self.cosine_min, float(np.min(token_cosine(ref64, test64))))
        if frames:
            self._add_frames(ref64, error, frames)

    def _add_frames(self, ref: np.ndarray, error: np.ndarray, frames: int) -> None:
        if ref.size % frames:
            raise ValueError(f"{ref.shape} does not split into {frames} frames")
        rows_ref = ref.reshape(frames, -1)
        rows_err = error.reshape(frames, -1)
        grow = frames - len(self.frame_signal)
        if grow > 0:
            self.frame_signal += [0.0] * grow
            self.frame_noise += [0.0] * grow
        for f in range(frames):
            self.frame_signal[f] += float(np.sum(rows_ref[f] ** 2))
            self.frame_noise[f] += float(np.sum(rows_err[f] ** 2))

    @property
    def rel_l2(self) -> float:
        return math.sqrt(self.noise / self.signal) if self.signal else 0.0

    @property
    def sqnr_db(self) -> float | None:
        """10·log10(signal / noise); None when the two sides are identical (infinite)."""
        if self.noise == 0.0:
            return None
        return 10.0 * math.log10(self.signal / self.noise) if self.signal else -math.inf

    @property
    def rel_l2_per_frame(self) -> list[float]:
        """Relative L2 error of each frame index (all videos' frame ``f`` together)."""
        return [
            math.sqrt(n / s) if s else 0.0
            for s, n in zip(self.frame_signal, self.frame_noise, strict=True)
        ]

    def to_json(self) -> dict:
        """cosine_min, sqnr_db (None: identical), rel_l2, max_abs, identical, rel_l2_per_frame."""
        return {
            "cosine_min": self.cosine_min,
            "sqnr_db": self.sqnr_db,
            "rel_l2": self.rel_l2,
            "max_abs": self.max_abs,
            "identical": self.noise == 0.0,
            "rel_l2_per_frame": self.rel_l2_per_frame,
        }


def token_cosine(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of each token's feature vector (last axis)."""
    a = ref.reshape(-1, ref.shape[-1])
    b = test.reshape(-1, test.shape[-1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = norms == 0
    return np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


def kl_per_row(ref_logits: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    """KL(ref || test) of each row's next-token distribution ([..., V] -> [...])."""
    p, q = log_softmax64(ref_logits), log_softmax64(test_logits)
    return np.maximum(np.sum(np.exp(p) * (p - q), axis=-1), 0.0)  # rounding can dip below 0


@dataclass
class TokenDrift:
    """KL(ref || test) and top-1 agreement over next-token distributions."""

    kl_sum: float = 0.0
    agree: int = 0
    count: int = 0

    def add(self, ref_logits: np.ndarray, test_logits: np.ndarray) -> None:
        """Rows of logits [steps, V] at the same teacher-forced positions."""
        self.kl_sum += float(np.sum(kl_per_row(ref_logits, test_logits)))
        self.agree += int(np.sum(ref_logits.argmax(-1) == test_logits.argmax(-1)))
        self.count += ref_logits.shape[0]

    @property
    def kl_mean(self) -> float:
        return self.kl_sum / self.count if self.count else 0.0

    @property
    def top1_agreement(self) -> float:
        return self.agree / self.count if self.count else 1.0
