"""Static check that ONNX graphs hold only what TensorRT 10 parses.

Every node must be a default-domain op that ``trt_support`` lists, its data
tensors must have a listed dtype, the opset must be in TensorRT's range, and
the restrictions a static check can see (axes given as constants, TopK
sorted, no MaxPool indices, INT4 block quantization's layout: ``lint_trt_blocks``)
must hold. Runs without TensorRT, in CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from ..runtime.errors import UserError
from .lint_trt_blocks import BLOCK_QUANT_OPSET, block_problem, has_blocks, is_blocked
from .trt_support import OPSET_RANGE, TRT_VERSION, supported_ops

DTYPE_NAMES = {
    TensorProto.FLOAT: "f32",
    TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.INT32: "i32",
    TensorProto.INT64: "i64",
    TensorProto.BOOL: "bool",
    TensorProto.UINT8: "u8",
    TensorProto.INT8: "i8",
    TensorProto.INT4: "i4",
    TensorProto.FLOAT8E4M3FN: "f8",
    TensorProto.DOUBLE: "f64",
}
# Which input carries the op's data type (default 0); -1: check output 0 instead.
TYPED_INPUT = {
    "Where": 1,
    "Constant": -1,
    "ConstantOfShape": -1,
    "RandomNormal": -1,
    "RandomUniform": -1,
    "Cast": -1,
    "CastLike": 0,
}
# Inputs (by index, opset ≥ 13/18 form) that TensorRT needs as constants.
CONSTANT_INPUTS = {
    "Slice": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Pad": (3,),
    "CumSum": (1,),
    **{
        op: (1,)
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
}
RESIZE_MODES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}


@dataclass(frozen=True)
class LintProblem:
    graph: str
    node: str
    op: str
    message: str

    def line(self) -> str:
        return f"{self.graph}: node {self.node!r} ({self.op}): {self.message}"


def _value_types(model: onnx.ModelProto) -> dict[str, str]:
    """Element type (short name) of every named tensor, after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: DTYPE_NAMES.get(t.data_type, f"type{t.data_type}") for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        elem = value.type.tensor_type.elem_type
        types[value.name] = DTYPE_NAMES.get(elem, f"type{elem}")
    return types


def _attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _zero_point_problem(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> str | None:
    """TensorRT quantizes symmetrically: a Q/DQ zero point must be a constant 0."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    zero_point = weights.get(node.input[2])
    if zero_point is None:
        return "the zero point must be an initializer for TensorRT"
    if numpy_helper.to_array(zero_point).any():
        return "the zero point must be 0 (TensorRT quantizes symmetrically)"
    return None


def _restriction(
    node: onnx.NodeProto, constants: set[str], weights: dict[str, onnx.TensorProto]
) -> str | None:
    """The first TensorRT restriction ``node`` breaks, if any."""
    for index in CONSTANT_INPUTS.get(node.op_type, ()):
        if index < len(node.input) and node.input[index] and node.input[index] not in constants:
            return f"input {index} ({node.input[index]!r}) must be a constant for TensorRT"
    op = node.op_type
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return _zero_point_problem(node, weights)
    if op == "Constant" and any(
        a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute
    ):
        return "sparse or string constants are unsupported"
    if op == "TopK" and _attribute(node, "sorted", 1) != 1:
        return "TopK must be sorted"
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "the Indices output is unsupported"
    if op in ("MaxPool", "AveragePool", "LpPool") and any(
        d != 1 for d in list(_attribute(node, "dilations", []))  # type: ignore[call-overload]
    ):
        return "dilations must be all ones"
    if op == "LayerNormalization" and any(node.output[1:]):
        return "only the first output is supported"
    if op == "ScatterND" and _attribute(node, "reduction", b"none") not in (b"none", "none"):
        return "ScatterND reduction is unsupported"
    mode = _attribute(node, "coordinate_transformation_mode", b"half_pixel")
    if op == "Resize" and (mode.decode() if isinstance(mode, bytes) else mode) not in RESIZE_MODES:
        return f"Resize coordinate_transformation_mode {mode!r} is unsupported"
    return None


def _node_dtype(node: onnx.NodeProto, types: dict[str, str]) -> str | None:
    index = TYPED_INPUT.get(node.op_type, 0)
    names = node.output if index < 0 else node.input
    position = 0 if index < 0 else index
    if position >= len(names) or not names[position]:
        return None
    return types.get(names[position])


def lint_model(model: onnx.ModelProto, graph_name: str) -> list[LintProblem]:
    """Every TensorRT incompatibility in ``model`` (weights need not be loaded)."""
    problems = []
    table = supported_ops()
    highest = BLOCK_QUANT_OPSET if has_blocks(model) else OPSET_RANGE[1]
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= opset.version <= highest:
            problems.append(
                LintProblem(
                    graph_name,
                    "-",
                    "opset",
                    f"opset {opset.version} outside TensorRT "
                    f"{TRT_VERSION}'s {OPSET_RANGE[0]}–{OPSET_RANGE[1]}",
                )
            )
    types = _value_types(model)
    weights = {t.name: t for t in model.graph.initializer}
    constants = set(weights)
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for used in node.input:
            readers.setdefault(used, []).append(node)
    for node in model.graph.node:
        name, op = node.name or node.output[0], node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems.append(
                LintProblem(graph_name, name, op, f"custom-domain op {node.domain}::{op}")
            )
            continue
        if op not in table:
            problems.append(
                LintProblem(graph_name, name, op, f"not supported by TensorRT {TRT_VERSION}")
            )
            continue
        dtype = _node_dtype(node, types)
        if dtype is not None and dtype not in table[op]:
            problems.append(
                LintProblem(
                    graph_name,
                    name,
                    op,
                    f"dtype {dtype} unsupported "
                    f"(TensorRT {TRT_VERSION} takes {' '.join(sorted(table[op]))})",
                )
            )
        broken = _restriction(node, constants, weights)
        if broken is None and is_blocked(node):
            broken = block_problem(node, weights, readers)
        if broken:
            problems.append(LintProblem(graph_name, name, op, broken))
    return problems


def lint_file(path: str | Path) -> list[LintProblem]:
    """Lint one ONNX file (external weights are not read)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise UserError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    return lint_model(model, Path(path).name)
