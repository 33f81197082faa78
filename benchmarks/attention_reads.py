"""How fast ONNX Runtime reads a decode step's KV cache, per attention formulation.

    python -m crosslmm_edge.benchmarks.attention_reads [--past 4086] [--rounds 10]

Each graph holds 24 layers of one decode step's attention (Qwen2.5-0.5B heads:
14 query, 2 KV, head 64) over its own K/V buffers, fed in place through I/O
binding, and is timed interleaved with two references reading the same bytes:

- ``ours``: the exported pattern, ``MatMul(q [kvh, G, hd], K [P, kvh, hd] permuted)``,
  which ONNX Runtime runs as ``FusedMatMul(transBatchB)`` on the cache in place
  (``ours_scores_only``, ``ours_values_only``: its two products apart, each
  reading half of the bytes);
- ``cache_rows``: the cache as the streamed (left) operand of both products, with
  a block-diagonal query matrix (no packing of the cache, kvh× the multiply-adds);
- ``head_rows``: a head-major K cache and a transposed (``[kvh, hd, P]``) V cache, each
  the streamed left operand of its product with the group's query rows (no packing,
  no wasted multiply-adds);
- ``head_major_gemv``: a ``[kvh, P, hd]`` cache and one row per query head
  (M = 1 products, the shape the weight MatMuls have);
- ``gqa``: ``com.microsoft.GroupQueryAttention`` on ``[1, kvh, P, hd]`` buffers shared
  between past and present (what onnxruntime-genai runs);
- ``gqa_rows``: the same op with each KV head's G query heads as G rows of kvh heads
  (``export/graphs/ort_grouped_decode.py``; an ``attention_bias`` hides the G-1 scratch
  rows it writes after the token);
- ``gqa_fp16``, ``gqa_rows_fp16``: those two over a float16 cache (query, key, value
  and bias in float16 too; the kernel computes in float32), reading half the bytes:
  ``onnx/int4``'s default cache (``export/graphs/ort_half_cache.py``);
- ``weight_matmul``: ``[1, 896] @ W`` with W as large as the KV cache (a weight read);
- ``numpy_read``: the bandwidth probe's sum over the same bytes (``machine.bandwidth_gbs``).

Prints the median ms of each and the GB/s of the bytes it reads.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

LAYERS, KV_HEADS, GROUP, HEAD = 24, 2, 7, 64
HEADS = KV_HEADS * GROUP
# Formulations that read half of the float32 K/V bytes: one product, or a float16 cache.
HALF_READERS = dict.fromkeys(
    ("ours_scores_only", "ours_values_only", "gqa_fp16", "gqa_rows_fp16"), 0.5
)


def _model(nodes, inputs, outputs, inits=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "attention", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _float(name: str, shape, dtype=np.float32):
    from onnx import helper

    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape
    )


def ours_graph(past: int, parts: str = "kv") -> bytes:
    """The exported batch-1 pattern over ``[1, P, kvh, hd]`` caches; ``parts``: "kv" both
    products, "k" the scores only (over the K caches), "v" the weighted sum only (V caches,
    the probabilities fed)."""
    from onnx import helper, numpy_helper

    nodes, outs = [], []
    inputs = [_float("q", [KV_HEADS, GROUP, HEAD]), _float("probs", [KV_HEADS, GROUP, past])]
    for i in range(LAYERS):
        inputs += [_float(f"k{i}", [1, past, KV_HEADS, HEAD]), _float(f"v{i}", [1, past, 2, HEAD])]
        probs = f"p{i}" if "k" in parts else "probs"
        if "k" in parts:
            nodes += [
                helper.make_node("Squeeze", [f"k{i}", "axis0"], [f"k{i}_3d"]),
                helper.make_node("Transpose", [f"k{i}_3d"], [f"k{i}_t"], perm=[1, 2, 0]),
                helper.make_node("MatMul", ["q", f"k{i}_t"], [f"s{i}"]),
                helper.make_node("Softmax", [f"s{i}"], [probs], axis=-1),
            ]
        if "v" in parts:
            nodes += [
                helper.make_node("Squeeze", [f"v{i}", "axis0"], [f"v{i}_3d"]),
                helper.make_node("Transpose", [f"v{i}_3d"], [f"v{i}_t"], perm=[1, 0, 2]),
                helper.make_node("MatMul", [probs, f"v{i}_t"], [f"o{i}"]),
            ]
        outs.append(f"o{i}" if "v" in parts else probs)
    nodes.append(helper.make_node("Sum", outs, ["out"]))
    axis = numpy_helper.from_array(np.array([0], np.int64), "axis0")
    return _model(nodes, inputs, [_float("out", None)], [axis])


def cache_rows_graph(past: int) -> bytes:
    """The cache as the streamed operand: ``K [P, kvh·hd] @ q`` (block-diagonal
    ``[kvh·hd, H]``) and ``V^T [kvh·hd, P] @ probs^T``; kvh× the multiply-adds."""
    from onnx import helper, numpy_helper

    nodes, outs = [], []
    inputs = [_float("q_blocks", [KV_HEADS * HEAD, HEADS])]
    for i in range(LAYERS):
        inputs += [_float(f"k{i}", [1, past, KV_HEADS, HEAD]), _float(f"v{i}", [1, past, 2, HEAD])]
        nodes += [
            helper.make_node("Reshape", [f"k{i}", "rows"], [f"k{i}_2d"]),
            helper.make_node("MatMul", [f"k{i}_2d", "q_blocks"], [f"s{i}"]),  # [P, H]
            helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=0),
            helper.make_node("Reshape", [f"v{i}", "rows"], [f"v{i}_2d"]),
            helper.make_node("Transpose", [f"v{i}_2d"], [f"v{i}_t"], perm=[1, 0]),
            helper.make_node("MatMul", [f"v{i}_t", f"p{i}"], [f"o{i}"]),  # [kvh·hd, H]
        ]
        outs.append(f"o{i}")
    nodes.append(helper.make_node("Sum", outs, ["out"]))
    rows = numpy_helper.from_array(np.array([past, KV_HEADS * HEAD], np.int64), "rows")
    return _model(nodes, inputs, [_float("out", None)], [rows])


def head_rows_graph(past: int) -> bytes:
    """Head-major ``K [kvh, P, hd]`` and transposed ``V^T [kvh, hd, P]`` caches, each the
    streamed left operand of its product with the group's G query rows (no packing of
    the cache, no wasted multiply-adds)."""
    from onnx import helper

    nodes, outs = [], []
    inputs = [_float("q_t", [KV_HEADS, HEAD, GROUP])]
    for i in range(LAYERS):
        inputs += [_float(f"k{i}", [KV_HEADS, past, HEAD]), _float(f"v{i}", [2, HEAD, past])]
        nodes += [
            helper.make_node("MatMul", [f"k{i}", "q_t"], [f"s{i}"]),  # [kvh, P, G]
            helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=1),
            helper.make_node("MatMul", [f"v{i}", f"p{i}"], [f"o{i}"]),  # [kvh, hd, G]
        ]
        outs.append(f"o{i}")
    nodes.append(helper.make_node("Sum", outs, ["out"]))
    return _model(nodes, inputs, [_float("out", None)])


def head_major_graph(past: int) -> bytes:
    """``[kvh, 1, P, hd]`` caches, one M = 1 product per query head (K broadcast over G)."""
    from onnx import helper

    nodes, outs = [], []
    inputs = [_float("q", [KV_HEADS, GROUP, 1, HEAD])]
    for i in range(LAYERS):
        inputs += [_float(f"k{i}", [KV_HEADS, 1, past, HEAD]), _float(f"v{i}", [2, 1, past, HEAD])]
        nodes += [
            helper.make_node("Transpose", [f"k{i}"], [f"k{i}_t"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", f"k{i}_t"], [f"s{i}"]),  # [kvh, G, 1, P]
            helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=-1),
            helper.make_node("MatMul", [f"p{i}", f"v{i}"], [f"o{i}"]),  # [kvh, G, 1, hd]
        ]
        outs.append(f"o{i}")
    nodes.append(helper.make_node("Sum", outs, ["out"]))
    return _model(nodes, inputs, [_float("out", None)])


def gqa_graph(capacity: int, dtype=np.float32) -> bytes:
    """GroupQueryAttention per layer over past/present buffers ``[1, kvh, capacity, hd]``
    of ``dtype`` (its query, key and value too)."""
    inputs = [_float("q", [1, 1, HEADS * HEAD], dtype)]
    inputs += [_float(n, [1, 1, KV_HEADS * HEAD], dtype) for n in ("k_new", "v_new")]
    return _gqa_layers(capacity, inputs, HEADS, (), dtype)


def gqa_rows_graph(capacity: int, dtype=np.float32) -> bytes:
    """GroupQueryAttention with G query rows of kvh heads each, over the same buffers."""
    width = KV_HEADS * HEAD
    names = ("q_rows", "k_rows", "v_rows")
    inputs = [_float(name, [1, GROUP, width], dtype) for name in names]
    inputs.append(_float("bias", [1, 1, GROUP, "total"], dtype))
    return _gqa_layers(capacity, inputs, KV_HEADS, ("", "", "", "bias"), dtype)


def _gqa_layers(
    capacity: int, inputs: list, heads: int, extra: tuple[str, ...], dtype=np.float32
) -> bytes:
    """24 layers of the op on ``inputs``' first three (query, key, value) and ``extra``."""
    from onnx import TensorProto, helper

    qkv = [value.name for value in inputs[:3]]
    lengths = ("seqlens", "total")
    inputs = inputs + [helper.make_tensor_value_info(n, TensorProto.INT32, [1]) for n in lengths]
    nodes, outs, outputs = [], [], []
    for i in range(LAYERS):
        shape = [1, KV_HEADS, capacity, HEAD]
        inputs += [_float(f"k{i}", shape, dtype), _float(f"v{i}", shape, dtype)]
        outputs += [_float(f"k{i}_out", shape, dtype), _float(f"v{i}_out", shape, dtype)]
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [*qkv, f"k{i}", f"v{i}", *lengths, *extra],
                [f"o{i}", f"k{i}_out", f"v{i}_out"],
                domain="com.microsoft",
                num_heads=heads,
                kv_num_heads=KV_HEADS,
            )
        )
        outs.append(f"o{i}")
    nodes.append(helper.make_node("Sum", outs, ["out"]))
    return _model(nodes, inputs, [_float("out", None, dtype), *outputs])


def scratch_bias(past: int) -> np.ndarray:
    """[1, 1, G, past+G]: row j hides the scratch positions past+1 .. past+j."""
    bias = np.zeros((1, 1, GROUP, past + GROUP), np.float32)
    for row in range(1, GROUP):
        bias[0, 0, row, past + 1 : past + 1 + row] = -np.inf
    return bias


def weight_graph(columns: int) -> bytes:
    """``[1, 896] @ W [896, columns]``, W fed as an input (read from memory every run)."""
    from onnx import helper

    node = helper.make_node("MatMul", ["x", "w"], ["out"])
    inputs = [_float("x", [1, 896]), _float("w", [896, columns])]
    return _model([node], inputs, [_float("out", None)])


def bound_run(graph: bytes, arrays: dict[str, np.ndarray], threads: int, aliases=()) -> BoundRun:
    """A run of ``graph`` with every array bound in place (``aliases``: output -> input)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # The formulations run interleaved: a pool left spinning after its run would steal
    # the cores of the next formulation's run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    for name, array in arrays.items():
        binding.bind_input(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
    for output, source in aliases:
        array = arrays[source]
        binding.bind_output(output, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    binding.bind_output("out", "cpu")
    return BoundRun(session, binding, arrays)


class BoundRun:
    """A session run through a binding to arrays it keeps alive (bound by address)."""

    def __init__(self, session, binding, arrays: dict[str, np.ndarray]) -> None:
        self.session, self.binding, self.arrays = session, binding, arrays

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


def variants(past: int, threads: int) -> tuple[dict[str, Callable], int]:
    """Every formulation's run and the KV bytes each reads."""
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def caches(shape) -> dict[str, np.ndarray]:
        return {f"{kind}{i}": normal(*shape) for i in range(LAYERS) for kind in "kv"}

    kv_bytes = 2 * LAYERS * past * KV_HEADS * HEAD * 4
    ours = {"q": normal(KV_HEADS, GROUP, HEAD), **caches((1, past, KV_HEADS, HEAD))}
    head_major = {"q": normal(KV_HEADS, GROUP, 1, HEAD), **caches((KV_HEADS, 1, past, HEAD))}
    gqa = {"q": normal(1, 1, HEADS * HEAD), "k_new": normal(1, 1, KV_HEADS * HEAD)}
    gqa |= {"v_new": normal(1, 1, KV_HEADS * HEAD), "seqlens": np.array([past], np.int32)}
    gqa |= {"total": np.array([past + 1], np.int32), **caches((1, KV_HEADS, past + 8, HEAD))}
    aliases = [(f"{n}_out", n) for i in range(LAYERS) for n in (f"k{i}", f"v{i}")]
    rows = {n: normal(1, GROUP, KV_HEADS * HEAD) for n in ("q_rows", "k_rows", "v_rows")}
    rows |= {"seqlens": np.array([past + GROUP - 1], np.int32), "bias": scratch_bias(past)}
    rows |= {"total": np.array([past + GROUP], np.int32)}
    rows |= caches((1, KV_HEADS, past + 8 + GROUP, HEAD))
    weight = {"x": normal(1, 896), "w": normal(896, kv_bytes // (896 * 4))}
    flat = [ours[f"{kind}{i}"] for i in range(LAYERS) for kind in "kv"]
    pool = ThreadPoolExecutor(threads)
    ours["probs"] = normal(KV_HEADS, GROUP, past)
    blocks = {"q_blocks": normal(KV_HEADS * HEAD, HEADS), **caches((1, past, KV_HEADS, HEAD))}
    head_rows = {"q_t": normal(KV_HEADS, HEAD, GROUP)}
    head_rows |= {
        f"{kind}{i}": normal(*shape)
        for i in range(LAYERS)
        for kind, shape in (("k", (KV_HEADS, past, HEAD)), ("v", (KV_HEADS, HEAD, past)))
    }
    return {
        "ours": bound_run(ours_graph(past), ours, threads),
        "ours_scores_only": bound_run(ours_graph(past, "k"), ours, threads),
        "ours_values_only": bound_run(ours_graph(past, "v"), ours, threads),
        "cache_rows": bound_run(cache_rows_graph(past), blocks, threads),
        "head_rows": bound_run(head_rows_graph(past), head_rows, threads),
        "head_major_gemv": bound_run(head_major_graph(past), head_major, threads),
        "gqa": bound_run(gqa_graph(past + 8), gqa, threads, aliases),
        "gqa_rows": bound_run(gqa_rows_graph(past + 8 + GROUP), rows, threads, aliases),
        "gqa_fp16": bound_run(gqa_graph(past + 8, np.float16), _halved(gqa), threads, aliases),
        "gqa_rows_fp16": bound_run(
            gqa_rows_graph(past + 8 + GROUP, np.float16), _halved(rows), threads, aliases
        ),
        "weight_matmul": bound_run(weight_graph(weight["w"].shape[1]), weight, threads),
        "numpy_read": lambda: list(pool.map(_sum_all, [flat[::2], flat[1::2]])),
    }, kv_bytes


def _halved(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every float array in float16 (the lengths stay int32)."""
    return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in arrays.items()}


def _sum_all(arrays: list[np.ndarray]) -> None:
    for array in arrays:
        array.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--past", type=int, default=4086)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runs, kv_bytes = variants(args.past, args.threads)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_index:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    print(f"past {args.past}: {kv_bytes / 1e6:.1f} MB of float32 K/V, {args.threads} threads")
    print(f"{'':16s} {'median':>8s} {'fastest':>8s}   GB/s of the median")
    for name, seconds in times.items():
        median, fastest = statistics.median(seconds), min(seconds)
        read = kv_bytes * HALF_READERS.get(name, 1.0)
        rate = read / median / 1e9
        print(f"{name:16s} {median * 1000:8.2f} {fastest * 1000:8.2f} ms {rate:6.2f}")


if __name__ == "__main__":
    main()
