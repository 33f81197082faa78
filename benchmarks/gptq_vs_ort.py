"""Our GPTQ against round to nearest and ONNX Runtime's GPTQ, on one weight.

ONNX Runtime ships a GPTQ (``onnxruntime.quantization.neural_compressor.
weight_only.gptq``, behind ``MatMulNBitsQuantizer``'s GPTQ config). This
script feeds it and ours the same weight and Gram matrix of correlated
activations, and prints each one's output error ``|X W - X Ŵ|² / |X W|²`` on
rows the Gram matrix never held, beside round to nearest on each one's grid
(ONNX Runtime's with an identity Gram matrix: no channel coupled to another).

    python -m crosslmm_edge.benchmarks.gptq_vs_ort [--channels 256] [--columns 96]
"""

from __future__ import annotations

import argparse

import numpy as np

from ..calibration.int4.block_quant import BlockScheme, quantize_weight
from ..calibration.int4.gptq import gptq_weight, inverse_cholesky, output_loss


def problem(channels: int, columns: int, seed: int = 0):
    """(weight [K, N], rows the Gram matrix holds, rows it never held)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((channels, channels)) * rng.uniform(0.1, 3.0, channels)
    rows = (rng.standard_normal((5 * 1024, channels)) @ mixing / np.sqrt(channels)).astype(
        np.float32
    )
    weight = (rng.standard_normal((channels, columns)) / 16).astype(np.float32)
    return weight, rows[:4096], rows[4096:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--columns", type=int, default=96)
    args = parser.parse_args()
    from onnxruntime.quantization.neural_compressor.weight_only import gptq as ort_gptq

    weight, seen, unseen = problem(args.channels, args.columns)
    gram = seen.T.astype(np.float64) @ seen  # [K, K]
    print(f"weight {args.channels} x {args.columns}, blocks of 32, error on 1024 unseen rows")
    for symmetric, theirs in ((True, "sym"), (False, "asym")):
        scheme = BlockScheme(4, 32, symmetric)
        wide = weight.astype(np.float64)
        rebuilt = {  # dequantized weights [K, N]
            "ours: GPTQ": gptq_weight(weight, inverse_cholesky(gram), scheme).dequantize(32),
            "RTN": quantize_weight(weight, scheme).dequantize(32),
            "ONNX Runtime: GPTQ": ort_gptq(wide.copy(), gram.copy(), 4, 32, theirs),
            "RTN ": ort_gptq(wide.copy(), np.eye(len(gram)), 4, 32, theirs),
        }
        errors = [f"{k} {output_loss(unseen, weight, v):.5f}" for k, v in rebuilt.items()]
        print(f"{'symmetric ' if symmetric else 'asymmetric'}  " + ", ".join(errors))


if __name__ == "__main__":
    main()
