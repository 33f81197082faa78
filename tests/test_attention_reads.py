"""``benchmarks/attention_reads``: its formulations compute the same attention."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from crosslmm_edge.benchmarks import attention_reads as reads

PAST = 20


def _run(graph: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(["out"], feeds)[0]


def test_gqa_rows_attends_as_the_one_row_op_does() -> None:
    """The G query heads of each KV head as G rows (scratch rows hidden by the bias) give
    the per-head op's output, summed over the 24 layers."""
    rng = np.random.default_rng(0)
    kvh, group, hd = reads.KV_HEADS, reads.GROUP, reads.HEAD
    capacity = PAST + 8 + group
    query = rng.standard_normal((1, 1, kvh * group * hd), dtype=np.float32)
    key, value = (rng.standard_normal((1, 1, kvh * hd), dtype=np.float32) for _ in range(2))
    caches = {
        f"{kind}{i}": rng.standard_normal((1, kvh, capacity, hd), dtype=np.float32)
        for i in range(reads.LAYERS)
        for kind in "kv"
    }
    one_row = {"q": query, "k_new": key, "v_new": value, **caches}
    one_row |= {"seqlens": np.array([PAST], np.int32), "total": np.array([PAST + 1], np.int32)}
    # query heads h = kv·G + j -> row j, head kv; the token's key and value on every row
    rows = query.reshape(kvh, group, hd).transpose(1, 0, 2).reshape(1, group, kvh * hd)
    grouped = {"q_rows": rows, "k_rows": np.repeat(key, group, 1), **caches}
    grouped |= {"v_rows": np.repeat(value, group, 1), "bias": reads.scratch_bias(PAST)}
    grouped |= {"seqlens": np.array([PAST + group - 1], np.int32)}
    grouped |= {"total": np.array([PAST + group], np.int32)}
    expected = _run(reads.gqa_graph(capacity), one_row).reshape(kvh, group, hd)
    got = _run(reads.gqa_rows_graph(capacity), grouped).reshape(group, kvh, hd)
    np.testing.assert_allclose(got.transpose(1, 0, 2), expected, rtol=1e-5, atol=1e-5)
    unmasked = _run(
        reads.gqa_rows_graph(capacity), grouped | {"bias": np.zeros_like(grouped["bias"])}
    )
    assert not np.allclose(unmasked.reshape(group, kvh, hd)[1:], got[1:], atol=1e-3)


def test_the_float16_formulations_attend_as_the_float32_ones() -> None:
    """``gqa_fp16`` and ``gqa_rows_fp16`` on the same (half-rounded) inputs give the float32
    op's output to half precision."""
    rng = np.random.default_rng(1)
    kvh, group, hd = reads.KV_HEADS, reads.GROUP, reads.HEAD
    capacity = PAST + 8 + group
    feeds = {"q": rng.standard_normal((1, 1, kvh * group * hd), dtype=np.float32)}
    feeds |= {
        n: rng.standard_normal((1, 1, kvh * hd), dtype=np.float32) for n in ("k_new", "v_new")
    }
    feeds |= {
        f"{kind}{i}": rng.standard_normal((1, kvh, capacity, hd), dtype=np.float32)
        for i in range(reads.LAYERS)
        for kind in "kv"
    }
    feeds |= {"seqlens": np.array([PAST], np.int32), "total": np.array([PAST + 1], np.int32)}
    half = reads._halved(feeds)
    rounded = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in half.items()}
    expected = _run(reads.gqa_graph(capacity), rounded)
    got = _run(reads.gqa_graph(capacity, np.float16), half)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
