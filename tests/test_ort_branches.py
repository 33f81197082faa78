"""Each DCAL's V2V branch under an ``If``: the same outputs with and without visual rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from crosslmm_edge.export.graphs.ort_branches import branch_v2v
from crosslmm_edge.runtime.model.config import CrossLMMConfig
from crosslmm_edge.runtime.package.manifest import load_manifest


@pytest.fixture(scope="module")
def graphs(embedded_fp16_package: Path) -> tuple[onnx.ModelProto, onnx.ModelProto, int, dict]:
    plain = onnx.load(str(embedded_fp16_package / "llm.onnx"))
    branched = onnx.ModelProto()
    branched.CopyFrom(plain)
    made = branch_v2v(branched)
    config = CrossLMMConfig.from_dict(load_manifest(embedded_fp16_package).model_config)
    per_frame = {"pooled": config.tokens_per_frame, "patches": config.vision_config.num_patches}
    return plain, branched, made, {"dcal": config.num_dcal, **per_frame}


def _feeds(session: ort.InferenceSession, frames: int, sizes: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    visual, memory = frames * sizes["pooled"], 2 * sizes["patches"]
    dims = {"text_len": 3, "visual_len": visual, "seq_len": 3 + visual, "past_len": 4}
    dims.update({"v2v_len": memory if frames else 0, "memory_len": memory})
    feeds = {}
    for spec in session.get_inputs():
        shape = [dims[d] if isinstance(d, str) else d for d in spec.shape]
        if spec.name == "position_ids":
            feeds[spec.name] = np.arange(4, 4 + shape[1], dtype=np.int64)[None]
        elif spec.name == "input_ids":
            feeds[spec.name] = rng.integers(4, 50, shape).astype(np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def test_every_dcal_branch_moves_under_an_if(graphs) -> None:
    plain, branched, made, sizes = graphs
    assert made == sizes["dcal"] == Counter(n.op_type for n in branched.graph.node)["If"]
    assert len(branched.graph.node) < len(plain.graph.node)


@pytest.mark.parametrize("frames", [0, 2])
def test_branched_graph_gives_the_same_outputs(graphs, frames: int) -> None:
    """No visual rows: the else graph; two frames: the branch runs inside the If."""
    plain, branched, _, sizes = graphs
    a = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(branched.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(a, frames, sizes)
    for spec, x, y in zip(a.get_outputs(), a.run(None, feeds), b.run(None, feeds), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5, err_msg=spec.name)
