"""HQQ 4-bit blocks: ONNX Runtime's half-quadratic solver, stored as blocked DQ.

Half-Quadratic Quantization chooses each block's scale and zero point with a
proximal solver on the weight alone (no calibration data). The solver is
ONNX Runtime's (``HQQWeightOnlyQuantizer.quantize_internal``, which needs
torch). Its own writer emits ``MatMulNBits`` with float zero points, and
ONNX Runtime 1.32 has no fast kernel for those: one 896 x 4864 product took
13-15 ms against 0.17-0.24 ms with integer zero points. So the zero points
are rounded to the 4-bit grid, the weights requantized on it, and the block
stored like every other asymmetric one (uint4 values and zero points behind
a blocked ``DequantizeLinear``, which ONNX Runtime fuses into its fast
``MatMulNBits`` path). TensorRT takes no zero points, so the ``onnx-trt/int4``
twin of an HQQ set is round-to-nearest, and its build record says so.
"""

from __future__ import annotations

import numpy as np

from .block_quant import BlockScheme, BlockWeight, blocked_rows, round_to_grid


def hqq_weight(weight: np.ndarray, scheme: BlockScheme) -> BlockWeight:
    """HQQ blocks of ``weight [K, N]`` (asymmetric ``scheme``), zero points on the grid."""
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantizer,
    )

    if scheme.symmetric:
        raise ValueError("HQQ blocks carry zero points: an asymmetric scheme is needed")
    solver = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(scheme.block_size, scheme.bits))
    transposed = torch.from_numpy(np.ascontiguousarray(weight.T, np.float32))  # [N, K]
    _, step, zero = solver.quantize_internal(transposed, scheme.bits, group_size=scheme.block_size)
    scales = np.ascontiguousarray(step.numpy().T, np.float32)  # [blocks, N]
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    low, high = scheme.levels
    zeros = np.clip(np.rint(zero.numpy().T), low, high).astype(np.int16)  # [blocks, N]
    blocks = blocked_rows(np.asarray(weight, np.float32), scheme.block_size)  # [blocks, B, N]
    values = round_to_grid(blocks, scales[:, None], zeros[:, None], scheme)
    flat = values.reshape(-1, weight.shape[1])[: weight.shape[0]].astype(np.int16)
    return BlockWeight(flat, scales, zeros)
