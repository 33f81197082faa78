"""Parameter-free 2-D token pooling and the projector Φ (spec section 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def pool_tokens(features: Tensor, grid: int, mode: str) -> Tensor:
    """Pool each frame's N = n×n row-major tokens to grid×grid.

    features: [F, N, Dv] -> [F, grid², Dv], row-major again.
    """
    f, n, d = features.shape
    side = math.isqrt(n)
    x = features.transpose(1, 2).reshape(f, d, side, side)  # [F, Dv, n, n]
    if mode == "bilinear":
        x = nn.functional.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    elif mode == "avg":
        x = nn.functional.adaptive_avg_pool2d(x, (grid, grid))
    else:
        raise ValueError(f"unknown pool_mode {mode!r}")
    return x.flatten(2).transpose(1, 2)


def pooling_matrix(num_tokens: int, grid: int, mode: str) -> Tensor:
    """The pooling as a [grid², N] matrix (both modes are linear in the tokens).

    Exporting a MatMul instead of Resize/AdaptiveAvgPool keeps the graph to ops
    every backend runs identically, for any grid that does not divide n.
    """
    eye = torch.eye(num_tokens, dtype=torch.float64).unsqueeze(0)  # [1, N, N] as N "channels"
    return pool_tokens(eye, grid, mode)[0]  # [grid², N]


class Projector(nn.Module):
    """Φ: Linear(Dv→D) → GELU → Linear(D→D), LLaVA's ``mlp2x_gelu``."""

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
