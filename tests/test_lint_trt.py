"""``lint-trt``: hand-built graphs that TensorRT 10 would reject are named, good ones pass."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from crosslmm_edge.cli import main
from crosslmm_edge.export.tensorrt.lint_trt import lint_model
from crosslmm_edge.export.tensorrt.trt_support import supported_ops


def _graph(nodes, inputs, outputs, initializers=(), opset=18, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports)


def _tensor(name: str, dtype: int = TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _matmul(dtype: int = TensorProto.FLOAT, opset: int = 18) -> onnx.ModelProto:
    return _graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
        [_tensor("a", dtype), _tensor("b", dtype, (3, 2))],
        [_tensor("y", dtype, (2, 2))],
        opset=opset,
    )


def test_a_plain_float_graph_passes():
    assert lint_model(_matmul(), "ok.onnx") == []


def test_a_custom_domain_op_fails_naming_it(tmp_path: Path, capsys):
    node = helper.make_node("FusedAttention", ["a"], ["y"], name="attn", domain="com.example")
    model = _graph([node], [_tensor("a")], [_tensor("y")], domains=("com.example",))
    problems = lint_model(model, "custom.onnx")
    assert [(p.op, p.node) for p in problems] == [("FusedAttention", "attn")]
    assert "com.example::FusedAttention" in problems[0].line()
    onnx.save(model, tmp_path / "custom.onnx")
    assert main(["lint-trt", str(tmp_path / "custom.onnx")]) == 1
    out = capsys.readouterr().out
    assert "FusedAttention" in out and "custom-domain" in out and "FAIL" in out


def test_an_op_tensorrt_lacks_fails():
    node = helper.make_node("Unique", ["a"], ["y"], name="uniq")
    model = _graph([node], [_tensor("a", shape=(6,))], [_tensor("y", shape=(None,))])
    assert "Unique" not in supported_ops()
    (problem,) = lint_model(model, "u.onnx")
    assert problem.op == "Unique" and "not supported" in problem.message


def test_an_unsupported_dtype_fails():
    (problem,) = lint_model(_matmul(TensorProto.INT32), "int.onnx")
    assert problem.op == "MatMul" and "dtype i32" in problem.message


def test_a_double_tensor_fails():
    (problem,) = lint_model(_matmul(TensorProto.DOUBLE), "f64.onnx")
    assert "dtype f64" in problem.message


def test_reduce_axes_must_be_constant():
    node = helper.make_node("ReduceMean", ["a", "axes"], ["y"], name="mean")
    inputs = [_tensor("a"), _tensor("axes", TensorProto.INT64, (1,))]
    model = _graph([node], inputs, [_tensor("y", shape=(2, 1))])
    (problem,) = lint_model(model, "r.onnx")
    assert problem.op == "ReduceMean" and "constant" in problem.message
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    model = _graph([node], [_tensor("a")], [_tensor("y", shape=(2, 1))], initializers=[axes])
    assert lint_model(model, "r.onnx") == []


@pytest.mark.parametrize("opset", [8, 21])
def test_an_opset_outside_tensorrts_range_fails(opset):
    problems = lint_model(_matmul(opset=opset), "o.onnx")
    assert any(p.op == "opset" and str(opset) in p.message for p in problems)


def test_topk_must_be_sorted():
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    node = helper.make_node("TopK", ["a", "k"], ["v", "i"], name="top", sorted=0)
    outputs = [_tensor("v", shape=(2, 2)), _tensor("i", TensorProto.INT64, (2, 2))]
    (problem,) = lint_model(_graph([node], [_tensor("a")], outputs, initializers=[k]), "t.onnx")
    assert problem.op == "TopK" and "sorted" in problem.message


def test_lint_of_a_folder_without_manifest_is_a_user_error(tmp_path, capsys):
    assert main(["lint-trt", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}")


@pytest.mark.parametrize(("zero", "ok"), [(0, True), (3, False)])
def test_dequantize_needs_a_zero_zero_point(zero, ok):
    weight = helper.make_tensor("w", TensorProto.INT8, [2, 3], [1, -2, 3, -4, 5, -6])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero_point = helper.make_tensor("z", TensorProto.INT8, [], [zero])
    node = helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"], name="dq")
    model = _graph([node], [], [_tensor("y")], initializers=[weight, scale, zero_point])
    problems = lint_model(model, "q.onnx")
    assert (problems == []) == ok
    assert ok or "zero point" in problems[0].message
