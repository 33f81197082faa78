"""A float16 self-attention cache for ``GroupQueryAttention`` (``onnx/int4`` only).

At a long context a decode step's attention reads the whole KV cache; in
float32, at 4 096 positions of the 0.5B shape, that is a third of the bytes
of its 4-bit weights. ONNX Runtime's CPU kernel of the op takes its query, key, value,
cache and RoPE tables in float16 and computes in float32 inside, so this pass
gives each decoder layer's op float16 operands: a ``Cast`` before its q/k/v
inputs, float16 copies of its cos/sin tables, the cache inputs and outputs
typed float16, and a ``Cast`` back to float32 after its output. Everything
else in the graph (the residual stream, norms, weights' activations) stays
float32.

Run it after ``ort_attention`` and before ``ort_grouped_decode``, whose
scratch-row bias follows the op's cache type.
"""

from __future__ import annotations

import onnx_ir as ir

from .graph_passes import CONTRIB

_QKV = range(3)  # the op's query, key, value inputs
_TABLES = (7, 8)  # cos_cache, sin_cache


def cache_in_float16(graph: ir.Graph) -> int:
    """Give every ``GroupQueryAttention`` of ``graph`` float16 operands; return how many."""
    attentions = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == CONTRIB]
    tables: dict[ir.Value, ir.Value] = {}  # float32 table -> its float16 copy, shared by layers
    for attention in attentions:
        for index in _QKV:
            _cast_input(graph, attention, index)
        for index in _TABLES:
            _half_table(graph, attention, index, tables)
        for value in (*attention.inputs[3:5], *attention.outputs[1:3]):
            if value is not None:  # the cache: graph inputs and outputs
                value.type = ir.TensorType(ir.DataType.FLOAT16)
        _cast_output(graph, attention)
    return len(attentions)


def _cast_input(graph: ir.Graph, attention: ir.Node, index: int) -> None:
    source = attention.inputs[index] if index < len(attention.inputs) else None
    if source is None:
        return
    cast = ir.node(
        "Cast", [source], {"to": ir.DataType.FLOAT16}, name=f"{attention.name}.half_input{index}"
    )
    cast.outputs[0].name = f"{attention.name}.half_input{index}"
    cast.outputs[0].shape = source.shape
    graph.insert_before(attention, cast)
    attention.replace_input_with(index, cast.outputs[0])


def _half_table(
    graph: ir.Graph, attention: ir.Node, index: int, tables: dict[ir.Value, ir.Value]
) -> None:
    table = attention.inputs[index] if index < len(attention.inputs) else None
    if table is None:
        return
    if table not in tables:
        if table.const_value is None:
            raise ValueError(f"{attention.name}: its RoPE table {table.name} is not an initializer")
        array = table.const_value.numpy().astype("float16")
        half = ir.Value(name=f"{table.name}.float16", const_value=ir.tensor(array))
        half.type, half.shape = ir.TensorType(ir.DataType.FLOAT16), ir.Shape(array.shape)
        graph.register_initializer(half)
        tables[table] = half
    attention.replace_input_with(index, tables[table])


def _cast_output(graph: ir.Graph, attention: ir.Node) -> None:
    attended = attention.outputs[0]
    cast = ir.node("Cast", [attended], {"to": ir.DataType.FLOAT}, name=f"{attention.name}.float")
    result = cast.outputs[0]
    result.shape, result.type = attended.shape, attended.type
    attended.replace_all_uses_with(result)
    cast.replace_input_with(0, attended)  # replace_all_uses_with moved the cast's own input
    result.name, attended.name = attended.name, f"{attended.name}.float16"
    attended.type = ir.TensorType(ir.DataType.FLOAT16)
    graph.insert_after(attention, cast)
