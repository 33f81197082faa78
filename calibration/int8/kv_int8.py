"""INT8 cross K/V: the memory that grows with the video, stored in one byte a value.

The pooling graph ends in a ``QuantizeLinear`` per cross K/V output, and the
LLM graph starts with the matching ``DequantizeLinear``; both use the same
constant per-KV-head scales (symmetric, zero point 0), calibrated as max |x|
per head over the recorded FP32 runs. The tensor names stay those of the
contract, only their dtype becomes int8, so the runtime passes the memory
from one graph to the other exactly as before and holds a quarter of the
bytes of FP32 (half of FP16) for the whole video.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QMAX = 127.0
KV_HEAD_AXIS = 2  # [1, tokens, kv_heads, head_dim]


def head_scales(max_abs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-head scales max|x|/127 (a head that was always 0 gets a harmless 1)."""
    return {
        name: np.where(value > 0, value / QMAX, 1.0).astype(np.float32)
        for name, value in sorted(max_abs.items())
    }


def _constants(
    model: onnx.ModelProto, name: str, scale: np.ndarray, float_dtype: np.dtype
) -> tuple[str, str]:
    scale_name, zero_name = f"{name}.int8_scale", f"{name}.int8_zero_point"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(scale.astype(float_dtype), scale_name),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), zero_name),
        ]
    )
    return scale_name, zero_name


def _rename_uses(model: onnx.ModelProto, old: str, new: str, outputs: bool) -> None:
    for node in model.graph.node:
        names = node.output if outputs else node.input
        for index, value in enumerate(names):
            if value == old:
                names[index] = new


def _value(model: onnx.ModelProto, name: str, inputs: bool) -> onnx.ValueInfoProto:
    values = model.graph.input if inputs else model.graph.output
    return next(v for v in values if v.name == name)


def quantize_outputs(
    model: onnx.ModelProto, scales: dict[str, np.ndarray], float_dtype: np.dtype
) -> None:
    """Make the pooling graph's cross K/V outputs int8 (in place)."""
    for name, scale in scales.items():
        scale_name, zero_name = _constants(model, name, scale, float_dtype)
        _rename_uses(model, name, f"{name}.float", outputs=True)
        _rename_uses(model, name, f"{name}.float", outputs=False)
        model.graph.node.append(
            helper.make_node(
                "QuantizeLinear",
                [f"{name}.float", scale_name, zero_name],
                [name],
                name=f"{name}.quantize",
                axis=KV_HEAD_AXIS,
            )
        )
        _value(model, name, inputs=False).type.tensor_type.elem_type = TensorProto.INT8


def dequantize_inputs(
    model: onnx.ModelProto, scales: dict[str, np.ndarray], float_dtype: np.dtype
) -> None:
    """Make the LLM graph's cross K/V inputs int8, dequantized on entry (in place)."""
    nodes = []
    for name, scale in scales.items():
        scale_name, zero_name = _constants(model, name, scale, float_dtype)
        _rename_uses(model, name, f"{name}.dequantized", outputs=False)
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [name, scale_name, zero_name],
                [f"{name}.dequantized"],
                name=f"{name}.dequantize",
                axis=KV_HEAD_AXIS,
            )
        )
        _value(model, name, inputs=True).type.tensor_type.elem_type = TensorProto.INT8
    for node in reversed(nodes):  # before every reader: keeps the graph topologically sorted
        model.graph.node.insert(0, node)


def cross_kv_bytes(
    num_dcal: int, patches: int, kv_heads: int, head_dim: int, frames: int, itemsize: int
) -> int:
    """Bytes of the T2V memory a video holds for every later question (V2V is dropped)."""
    return 2 * num_dcal * frames * patches * kv_heads * head_dim * itemsize
