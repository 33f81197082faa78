"""The weight bytes one decode step of an ONNX graph reads, counted from the graph.

File sizes overstate it: a table that only a ``Gather`` reads (the token
embedding next to a separately quantized LM head) costs one row per step, not
the whole table. Everything else a weight feeds (MatMul, MatMulNBits,
DequantizeLinear, Add) is read whole on every step. Packed 4-bit tensors
count half a byte per element.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROW_READERS = {"Gather", "GatherBlockQuantized"}  # read the rows a token id selects
FOUR_BIT = {"INT4", "UINT4", "FLOAT4E2M1"}


def tensor_bytes(tensor) -> int:
    """Bytes an ``onnx.TensorProto`` holds (from its dims and type; no data loaded)."""
    import onnx

    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
    if type_name in FOUR_BIT:
        return (count + 1) // 2
    if type_name == "STRING":
        return 0
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def weight_bytes_per_step(graph_file: str | Path) -> dict[str, int]:
    """``read`` (bytes a one-token step reads from the weights) and ``stored`` (all of them)."""
    import onnx

    model = onnx.load(str(graph_file), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    read = stored = 0
    for tensor in model.graph.initializer:
        size = tensor_bytes(tensor)
        stored += size
        users = readers.get(tensor.name, set())
        if users and users <= ROW_READERS and tensor.dims:
            read += size // max(int(tensor.dims[0]), 1)
        elif users:
            read += size
    return {"read": read, "stored": stored}
