"""TensorRT 10's rules for INT4 block quantization (weight-only), checked statically.

A blocked ``DequantizeLinear`` (``block_size`` attribute, ONNX opset 21) is how
TensorRT 10 takes 4-bit weights: the quantized data is an INT4 initializer of
rank 2, blocked along one axis, its scale an initializer of the same rank whose
blocked axis is ``ceil(K / block_size)`` long, no zero point (or zeros: TensorRT
quantizes symmetrically), and the dequantized weight feeds a ``MatMul``. Only
INT4 is blocked (INT8 weights are per-tensor or per-channel). Block quantization
needs opset 21, above the 9–20 range TensorRT 10.0's matrix lists, so a graph
whose only reason to be at opset 21 is such a node is accepted at 21.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

BLOCK_QUANT_OPSET = 21  # the first opset with DequantizeLinear's block_size


def is_blocked(node: onnx.NodeProto) -> bool:
    """A DequantizeLinear with a block_size attribute."""
    return node.op_type == "DequantizeLinear" and any(
        a.name == "block_size" for a in node.attribute
    )


def has_blocks(model: onnx.ModelProto) -> bool:
    return any(is_blocked(node) for node in model.graph.node)


def block_problem(
    node: onnx.NodeProto,
    weights: dict[str, onnx.TensorProto],
    readers: dict[str, list[onnx.NodeProto]],
) -> str | None:
    """The first TensorRT block-quantization rule a blocked DQ breaks, if any."""
    data = weights.get(node.input[0])
    if data is None:
        return "blocked DequantizeLinear: the quantized data must be an initializer"
    if data.data_type != TensorProto.INT4:
        return "TensorRT blocks only INT4 weights (signed, zero point 0)"
    if len(data.dims) != 2:
        return f"blocked INT4 weights must be 2-D, got rank {len(data.dims)}"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axis, block = int(attrs.get("axis", 1)) % 2, int(attrs["block_size"])
    scale = weights.get(node.input[1])
    expected = list(data.dims)
    expected[axis] = -(-expected[axis] // block) if block > 0 else 0
    if scale is None or list(scale.dims) != expected:
        return f"the scale must be an initializer of shape {expected} (block {block}, axis {axis})"
    uses = readers.get(node.output[0], [])
    if not uses or any(r.op_type != "MatMul" or r.input[1] != node.output[0] for r in uses):
        return "a blocked INT4 weight must feed MatMul's second input only"
    return None
