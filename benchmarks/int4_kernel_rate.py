"""Is an INT4 decode step bound by memory or by the kernel? Its 4-bit MatMuls, from memory
and from cache.

    python3 -m crosslmm_edge.benchmarks.int4_kernel_rate [--layers 24] [--block-sizes 32 128]

The weight MatMuls of a decode step at M = 1 (by default the Qwen2.5-0.5B
decoder's: fused q/k/v, o_proj, fused gate/up, down_proj), written as the
INT4 LLM writes them (blocked ``DequantizeLinear`` + ``MatMul``, which ONNX
Runtime fuses into ``MatMulNBits`` with 8-bit activations), random symmetric
blocks. Two sessions per block size, run in alternating rounds:

- streamed: ``--layers`` layers, each with its own weights (far beyond the cache);
- resident: one layer's weights, run ``--layers`` times (they stay in the cache).

Each prints the weight bytes (4-bit values and float32 scales) it reads per
second, next to the bandwidth probe. When the resident rate is not far above
the streamed one, the kernel, not memory, sets the speed, and the streamed
rate over the probe is about the highest bandwidth fraction a decode step of
these weights can reach with this kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from .graph_bytes import tensor_bytes
from .machine import bandwidth_gbs


def layer_shapes(hidden: int, intermediate: int, heads: int, kv_heads: int) -> list[tuple]:
    """(K, N) of one decoder layer's weight MatMuls, fused as the INT4 graph fuses them."""
    head_dim = hidden // heads
    qkv = hidden + 2 * kv_heads * head_dim
    return [(hidden, qkv), (hidden, hidden), (hidden, 2 * intermediate), (intermediate, hidden)]


def _blocks(rows: int, cols: int, block_size: int, rng: np.random.Generator):
    from ..calibration.int4.block_quant import BlockWeight

    values = rng.integers(-7, 8, (rows, cols), dtype=np.int16)
    scales = rng.uniform(1e-3, 3e-3, (-(-rows // block_size), cols)).astype(np.float32)
    return BlockWeight(values, scales, None)


def weight_session(shapes: list[tuple], layers: int, block_size: int, threads: int):
    """A session computing ``x_K @ W`` for ``layers`` copies of ``shapes``, distinct weights;
    returns (session, weight bytes one run reads)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ..calibration.int4.block_quant import OPSET, BlockScheme, dequantize_node

    scheme = BlockScheme(4, block_size)
    rng = np.random.default_rng(0)
    inits, nodes, outputs, nbytes = [], [], [], 0
    for layer in range(layers):
        for index, (rows, cols) in enumerate(shapes):
            block = _blocks(rows, cols, block_size, rng)
            tensors, dq, weight = dequantize_node(f"w{layer}_{index}", block, scheme, np.float32)
            out = f"y{layer}_{index}"
            inits += tensors
            nodes += [dq, helper.make_node("MatMul", [f"x{rows}", weight], [out])]
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, cols]))
            nbytes += sum(tensor_bytes(t) for t in tensors)
    widths = sorted({rows for rows, _ in shapes})
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in widths]
    graph = helper.make_graph(nodes, "weights", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, nbytes


def _bound(session):
    """An I/O binding of random inputs and preallocated outputs (no allocation per run)."""
    binding, held = session.io_binding(), []
    rng = np.random.default_rng(1)
    for arg in session.get_inputs():
        held.append(rng.standard_normal(arg.shape).astype(np.float32))
        binding.bind_cpu_input(arg.name, held[-1])
    for arg in session.get_outputs():
        held.append(np.empty(arg.shape, np.float32))
        binding.bind_output(arg.name, "cpu", 0, np.float32, arg.shape, held[-1].ctypes.data)
    return binding, held


def _seconds(session, binding, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        session.run_with_iobinding(binding)
    return time.perf_counter() - start


def rates(shapes: list[tuple], layers: int, block_size: int, threads: int, repeats: int) -> dict:
    """Streamed and resident GB/s of ``layers`` layers of ``shapes`` in blocks of
    ``block_size``, and their ms per step (medians of ``repeats`` alternating rounds)."""
    streamed, streamed_bytes = weight_session(shapes, layers, block_size, threads)
    resident, layer_bytes = weight_session(shapes, 1, block_size, threads)
    bound = {"streamed": _bound(streamed), "resident": _bound(resident)}
    runs = {"streamed": (streamed, 1), "resident": (resident, layers)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, (session, count) in runs.items():
            time.sleep(0.05)  # the other session's pool stops spinning
            seconds = _seconds(session, bound[name][0], count)
            if round_index:
                times[name].append(seconds)
    step = {name: statistics.median(t) for name, t in times.items()}
    return {
        "step_ms_streamed": step["streamed"] * 1000,
        "step_ms_resident": step["resident"] * 1000,
        "gbs_streamed": streamed_bytes / step["streamed"] / 1e9,
        "gbs_resident": layer_bytes * layers / step["resident"] / 1e9,
        "weight_bytes": streamed_bytes,
        "weight_mb": streamed_bytes / 1e6,
        "layer_mb": layer_bytes / 1e6,
    }


def measure(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Per block size: streamed and resident GB/s of weight bytes, ms per step of weights."""
    shapes = layer_shapes(args.hidden, args.intermediate, args.heads, args.kv_heads)
    return {
        block_size: rates(shapes, args.layers, block_size, args.threads, args.repeats)
        for block_size in args.block_sizes
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    probe = bandwidth_gbs(threads=args.threads)
    result = measure(args)
    probe_after = bandwidth_gbs(threads=args.threads)
    print(
        f"{args.layers} layers of {args.hidden}/{args.intermediate}, {args.threads} threads, "
        f"median of {args.repeats}; bandwidth probe {probe:.1f} GB/s before, "
        f"{probe_after:.1f} after"
    )
    for block_size, row in result.items():
        print(
            f"  block {block_size:>3}: streamed {row['weight_mb']:6.1f} MB in "
            f"{row['step_ms_streamed']:6.2f} ms = {row['gbs_streamed']:5.1f} GB/s "
            f"({row['gbs_streamed'] / probe:.2f} of the probe); resident "
            f"{row['layer_mb']:4.1f} MB x {args.layers} in {row['step_ms_resident']:6.2f} ms "
            f"= {row['gbs_resident']:5.1f} GB/s; resident / streamed "
            f"{row['gbs_resident'] / row['gbs_streamed']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
