"""Cost of the LM head per decode step, by storage: float, INT8 blocks, INT4 blocks of 32/64/128.

    python3 -m crosslmm_edge.benchmarks.lm_head_storage [--vocab V] [--hidden H] [--repeats 30]

The head is one ``[1, hidden] x [hidden, vocab]`` MatMul per generated token,
and at the Qwen2.5-0.5B shape it is the largest weight the decode step reads
(float32 scales: 9 bits a weight at INT8 in blocks of 32; 5, 4.5 and 4.25 at
INT4 in blocks of 32, 64 and 128). Each storage is written as the INT4 LLM
writes it (``block_quant``: blocked ``DequantizeLinear`` + ``MatMul``, which
ONNX Runtime fuses into ``MatMulNBits``) around N(0, 0.02) weights; the
sessions run interleaved on the same activation and the median of
``--repeats`` is printed with the ratio to float and the output's error
against float.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

# storage -> (bits, block size); "float" has neither
STORAGES = {
    "float": (0, 0),
    "int8": (8, 32),
    "int4": (4, 32),
    "int4/64": (4, 64),
    "int4/128": (4, 128),
}


def head_session(weight: np.ndarray, storage: str, threads: int):
    """An ONNX Runtime session of ``y = x @ weight`` with the weight stored as ``storage``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ..calibration.int4.block_quant import BlockScheme, dequantize_node, quantize_weight

    hidden, vocab = weight.shape
    if storage == "float":
        inits, nodes, name = [numpy_helper.from_array(weight, "w")], [], "w"
    else:
        scheme = BlockScheme(*STORAGES[storage])
        inits, dq, name = dequantize_node("w", quantize_weight(weight, scheme), scheme, np.float32)
        nodes = [dq]
    graph = helper.make_graph(
        [*nodes, helper.make_node("MatMul", ["x", name], ["y"], "head")],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, vocab])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Sessions run interleaved: a pool left spinning after its run would steal the cores
    # of the next session's run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def bits_per_weight(storage: str) -> float:
    """Stored bits per weight: the integer plus its share of a float32 block scale."""
    bits, block = STORAGES[storage]
    return 32.0 if not bits else bits + 32 / block


def measure(vocab: int, hidden: int, repeats: int, threads: int) -> dict[str, dict[str, float]]:
    """Median ms, ratio to float and relative error of each storage."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((hidden, vocab)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, hidden)).astype(np.float32)
    sessions = {s: head_session(weight, s, threads) for s in STORAGES}
    outputs = {s: sess.run(None, {"x": x})[0] for s, sess in sessions.items()}
    times: dict[str, list[float]] = {s: [] for s in STORAGES}
    for _ in range(repeats):
        for storage, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[storage].append(time.perf_counter() - start)
    ms = {s: statistics.median(t) * 1000 for s, t in times.items()}
    reference = outputs["float"]
    return {
        s: {
            "ms": ms[s],
            "over_float": ms[s] / ms["float"],
            "rel_error": float(np.linalg.norm(outputs[s] - reference) / np.linalg.norm(reference)),
            "weight_mib": weight.nbytes / 2**20 * bits_per_weight(s) / 32,
        }
        for s in STORAGES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.vocab, args.hidden, args.repeats, args.threads)
    print(f"LM head {args.hidden} x {args.vocab}, {args.threads} threads, median of {args.repeats}")
    for storage, row in result.items():
        print(
            f"  {storage:<8} {row['ms']:8.2f} ms  {row['over_float']:5.2f}x float  "
            f"weights {row['weight_mib']:7.1f} MiB  rel. error {row['rel_error']:.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
