"""GPTQ: 4-bit blocks whose rounding errors are corrected by the channels after them.

GPTQ (Frantar et al., 2022) quantizes a weight ``W [K, N]`` one input channel
(a row of ``W``) at a time and moves each channel's rounding error onto the
channels not yet quantized, weighted by the inverse of the activations'
second moment ``H = Σ xᵀx`` (the Gram matrix calibration streams,
``activation_stats``). What stays close is the product ``X W``, not ``W``.
As in GPTQ's grouped form, a block's scale (and zero point) is chosen from the
updated weights when its first channel is reached, so the result is stored
like every other block weight (``block_quant``) and ONNX Runtime and TensorRT
read it unchanged. Updates are batched ``LAZY`` channels at a time (GPTQ's
lazy batch), which changes the arithmetic's order: the same result up to
floating-point rounding (a test compares it with the paper's elimination).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from ..collect.activation_stats import TensorStats
from .block_quant import (
    BlockScheme,
    BlockWeight,
    block_params,
    quantize_weight,
    relative_error,
    round_to_grid,
)

DAMP = 0.01  # of mean(diag H), added to H's diagonal: GPTQ's default
LAZY = 128  # channels per batched update: a multiple of every block size (32, 64, 128)


def inverse_cholesky(gram: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """The upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``), ``H`` damped.

    A channel that never saw a nonzero activation gets ``H_ii = 1``: it is then
    coupled to no other, so its weight is rounded to nearest and kept (GPTQ
    zeroes it; a channel quiet in calibration may not be quiet later). The
    damping grows tenfold, at most four times, until ``H`` is positive definite.
    """
    hessian = np.array(gram, np.float64)  # [K, K]
    diagonal = np.diag(hessian).copy()
    dead = diagonal <= 0
    hessian[dead, dead] = 1.0
    diagonal[dead] = 1.0
    for attempt in range(5):
        damped = hessian + np.diag(np.full(len(diagonal), damp * 10**attempt * diagonal.mean()))
        try:
            lower = np.linalg.cholesky(damped)
            inverse = np.linalg.inv(lower)  # L⁻¹: H⁻¹ = L⁻ᵀ L⁻¹
            return np.linalg.cholesky(inverse.T @ inverse).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("activation Gram matrix is not positive definite when damped")


def gptq_weight(weight: np.ndarray, upper: np.ndarray, scheme: BlockScheme) -> BlockWeight:
    """GPTQ blocks of ``weight [K, N]`` given ``upper`` (``inverse_cholesky`` of its
    activation's Gram matrix, [K, K])."""
    rows, cols = weight.shape
    size = scheme.block_size
    assert LAZY % size == 0, "a block must not straddle two lazy batches"
    work = np.array(weight, np.float64)  # [K, N], updated as channels are quantized
    values = np.empty((rows, cols), np.int16)
    blocks = -(-rows // size)
    scales = np.empty((blocks, cols), np.float32)
    zeros = None if scheme.symmetric else np.empty((blocks, cols), np.int16)
    for start in range(0, rows, LAZY):
        stop = min(start + LAZY, rows)
        batch = work[start:stop]  # a view: rows are updated in place
        errors = np.empty_like(batch)  # [b, N]
        for j in range(stop - start):
            block = (start + j) // size
            if (start + j) % size == 0:  # the block's grid, from its updated weights
                found, zero = block_params(batch[None, j : j + size].astype(np.float32), scheme)
                scales[block] = found[0]
                if zeros is not None and zero is not None:
                    zeros[block] = zero[0]
            zero_row = None if zeros is None else zeros[block]
            stored = round_to_grid(batch[j], scales[block], zero_row, scheme)  # [N]
            values[start + j] = stored
            rebuilt = (stored - (0 if zero_row is None else zero_row)) * scales[block]
            errors[j] = (batch[j] - rebuilt) / upper[start + j, start + j]
            batch[j + 1 :] -= np.outer(upper[start + j, start + j + 1 : stop], errors[j])
        work[stop:] -= upper[start:stop, stop:].T @ errors  # [K - stop, N]
    return BlockWeight(values, scales, zeros)


def output_loss(rows: np.ndarray, weight: np.ndarray, rebuilt: np.ndarray) -> float:
    """``|X W - X Ŵ|² / |X W|²`` over ``rows`` (AWQ's measure), ``rebuilt`` the
    dequantized weight Ŵ."""
    return relative_error(rows @ weight, rows @ rebuilt)


class GptqQuantizer:
    """``block_quantize_model``'s quantizer: GPTQ for each 4-bit weight whose activation
    kept a Gram matrix, round to nearest for the rest (8-bit weights round finely enough,
    as in ``awq``). The factor of the last activation is kept: the MatMuls reading one
    activation (q/k/v, gate/up) come one after another."""

    def __init__(self, stats: Mapping[str, TensorStats]) -> None:
        self.stats = stats
        self._factor: tuple[str, np.ndarray] | None = None
        self.weights = 0  # quantized by GPTQ
        self.losses: dict[str, tuple[float, float]] = {}  # MatMul -> (GPTQ, RTN) output loss

    def __call__(self, node: onnx.NodeProto, weight: np.ndarray, scheme: BlockScheme):
        found = self.stats.get(node.input[0])
        gram = found.gram_matrix() if found is not None else None
        if scheme.bits != 4 or found is None or gram is None:
            return quantize_weight(weight, scheme)
        if self._factor is None or self._factor[0] != node.input[0]:
            self._factor = (node.input[0], inverse_cholesky(gram))
        block = gptq_weight(weight, self._factor[1], scheme)
        self.weights += 1
        if found.reservoir is not None and len(found.reservoir):
            rows, size = found.reservoir, scheme.block_size
            exact, rtn = rows @ weight, quantize_weight(weight, scheme)  # exact: [rows, N]
            self.losses[node.name] = (
                relative_error(exact, rows @ block.dequantize(size)),
                relative_error(exact, rows @ rtn.dequantize(size)),
            )
        return block

    def record(self) -> dict:
        """The build record's GPTQ entries: how many weights, damping, loss against RTN."""
        gptq = sum(loss for loss, _ in self.losses.values())
        rtn = sum(loss for _, loss in self.losses.values())
        return {
            "gptq_weights": self.weights,
            "gptq_damp": DAMP,
            "gptq_loss_vs_rtn": gptq / rtn if rtn else 1.0,
        }
