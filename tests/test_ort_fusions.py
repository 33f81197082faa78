"""ONNX Runtime-only fusions: same outputs, fewer nodes, never on a TensorRT graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from crosslmm_edge.export.graphs.ort_fusions import fuse_for_onnx_runtime, rope_tables
from crosslmm_edge.runtime.package.manifest import load_manifest

# Far from 0, so a wrong row of the cos/sin tables shows.
DIMS = {"text_len": 7, "visual_len": 0, "seq_len": 7, "past_len": 5, "v2v_len": 0}


def _feeds(session: ort.InferenceSession, start: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        shape = [DIMS.get(d, 20) if isinstance(d, str) else d for d in spec.shape]
        if spec.name == "position_ids":
            feeds[spec.name] = np.arange(start, start + shape[1], dtype=np.int64)[None]
        elif spec.name == "input_ids":
            feeds[spec.name] = rng.integers(4, 50, shape).astype(np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.fixture(scope="module")
def llm_graphs(embedded_fp16_package: Path) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    manifest = load_manifest(embedded_fp16_package)
    plain = onnx.load(str(embedded_fp16_package / "llm.onnx"))
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    counts = fuse_for_onnx_runtime(fused, rope_tables(manifest))
    return plain, fused, counts


def test_every_norm_and_rope_is_fused(llm_graphs) -> None:
    plain, fused, counts = llm_graphs
    before = Counter(n.op_type for n in plain.graph.node)
    after = Counter(n.op_type for n in fused.graph.node)
    layers = 4  # the embedded model's decoder layers: a RoPE on q and on k in each
    assert counts["rotary_embedding"] == after["RotaryEmbedding"] == 2 * layers
    assert after["Neg"] == 0 and after["Pow"] == after["ReduceMean"] == 0
    norms = after["SimplifiedLayerNormalization"] + after["SkipSimplifiedLayerNormalization"]
    assert norms == before["Pow"] == counts["rms_normalization"]
    assert sum(after.values()) < sum(before.values()) - 100


@pytest.mark.parametrize("start", [0, 300])
def test_fused_graph_gives_the_same_outputs(llm_graphs, start: int) -> None:
    plain, fused, _ = llm_graphs
    a = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(a, start)
    for spec, x, y in zip(a.get_outputs(), a.run(None, feeds), b.run(None, feeds), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4, err_msg=spec.name)


def test_positions_past_the_tables_are_refused_not_wrapped(llm_graphs) -> None:
    _, fused, _ = llm_graphs
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="out of range"):
        session.run(None, _feeds(session, 512))  # the package's max_context is 512
