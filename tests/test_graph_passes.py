"""The export's graph rewrites give the same outputs with fewer weight MatMuls."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosslmm_edge.calibration.recipes import module_path
from crosslmm_edge.export.graphs.graph_passes import NAME_SCOPES, fuse_sibling_matmuls

D = 8


def _linear(nodes, inits, x, module, width, bias, rng) -> str:
    """``x @ W (+ b)`` recorded as module ``module``, like the dynamo exporter does."""
    leaf = module.replace(".", "_")
    inits.append(numpy_helper.from_array(rng.standard_normal((D, width), np.float32), f"{leaf}.w"))
    scopes = repr(["", "model", module.rpartition(".")[0], module, f"linear_{leaf}"])
    matmul = helper.make_node("MatMul", [x, f"{leaf}.w"], [f"{leaf}.mm"], name=f"{leaf}_mm")
    matmul.metadata_props.add(key=NAME_SCOPES, value=scopes)
    nodes.append(matmul)
    if not bias:
        return f"{leaf}.mm"
    b = rng.standard_normal(width).astype(np.float32)
    inits.append(numpy_helper.from_array(b, f"{leaf}.b"))
    nodes.append(helper.make_node("Add", [f"{leaf}.mm", f"{leaf}.b"], [f"{leaf}.y"]))
    return f"{leaf}.y"


def _model(bias: tuple[bool, bool, bool]) -> onnx.ModelProto:
    """q/k/v of one attention (biases as given), gate/up of an MLP, and a k of another block."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outs = [
        _linear(nodes, inits, "x", f"layers.0.attn.{p}_proj", w, b, rng)
        for p, w, b in zip("qkv", (8, 4, 4), bias, strict=True)
    ]
    for part in ("gate", "up"):
        outs.append(_linear(nodes, inits, "x", f"layers.0.mlp.{part}_proj", 16, False, rng))
    outs.append(_linear(nodes, inits, "x", "layers.1.attn.k_proj", 4, False, rng))  # another block
    names = [f"y{i}" for i in range(len(outs))]
    nodes += [helper.make_node("Relu", [o], [n]) for o, n in zip(outs, names, strict=True)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", f"w{n}"]) for n in names],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("bias", [(True, True, True), (True, False, True), (False,) * 3])
def test_fused_siblings_give_the_same_outputs(bias: tuple[bool, bool, bool]) -> None:
    model = _model(bias)
    graph_ir = ir.from_proto(model)
    assert fuse_sibling_matmuls(graph_ir.graph) == 2  # q/k/v and gate/up; the other block's k alone
    fused = ir.to_proto(graph_ir)
    onnx.checker.check_model(fused, full_check=True)
    x = np.random.default_rng(1).standard_normal((3, D), np.float32)
    for want, got in zip(_run(model, x), _run(fused, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    weight_mms = [n for n in fused.graph.node if n.op_type == "MatMul"]
    assert sorted(module_path(n) for n in weight_mms) == [
        "layers.0.attn.q_k_v_proj",
        "layers.0.mlp.gate_up_proj",
        "layers.1.attn.k_proj",
    ]
    # biases are merged only when every sibling has one; otherwise they stay as they were
    assert sum(n.op_type == "Add" for n in fused.graph.node) == (1 if all(bias) else sum(bias))
    stored = {t.name for t in fused.graph.initializer}
    assert "layers_0_attn_q_proj.w" not in stored and "layers_1_attn_k_proj.w" in stored
    assert "layers.0.attn.q_k_v_proj.weight" in stored  # named like a checkpoint key
