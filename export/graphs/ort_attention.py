"""Decoder self-attention as ONNX Runtime's ``GroupQueryAttention`` (``onnx/int4`` only).

The exported attention is ~25 standard nodes per layer (grouping views,
scores of past and new keys, their softmax, two weighted sums). At 4-bit
weights each ONNX Runtime dispatch is a visible part of a decode step, and
onnxruntime-genai runs one fused ``com.microsoft::GroupQueryAttention`` there.
This pass puts that op in place of each decoder layer's attention.

The op needs its KV cache head-major (``[1, kvh, capacity, hd]``) and, to
avoid copying it, the same buffer bound as ``past_*`` and ``present_*``: it
writes the chunk's entries in place at the positions ``seqlens_k`` gives. So
the rewritten graph has the shared-cache signature of
``runtime.model.contract.llm_spec(..., shared_kv=True)``, and the runtime's
``KVCache`` switches to that layout for it.

Where both RoPEs of a layer are ``ort_fusions``' ``RotaryEmbedding`` on parts
of one fused q/k/v projection, the op reads that projection packed and
rotates q and k itself, by ``position_ids`` (never by where the cache ends),
so the Split and both RoPE nodes go too; otherwise it reads the rotated q, k
and v. The DCAL cross-attention is left as exported (it has no cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from ...runtime.model.config import CrossLMMConfig
from ...runtime.model.contract import (
    SEQLENS_INPUT,
    TOTAL_LENGTH_INPUT,
    ExportLimits,
    TensorSpec,
    llm_spec,
    past_names,
    present_names,
)
from ...runtime.package.manifest import Manifest
from .graph_passes import CONTRIB, NAME_SCOPES, sole_user

# What a layer's exported attention is made of; anything else means an unknown graph.
ATTENTION_OPS = {
    "Reshape", "Gather", "Transpose", "Squeeze", "Unsqueeze", "Mul", "MatMul", "Add",
    "Concat", "Softmax", "Slice", "Cast", "Shape", "Expand",
}  # fmt: skip
_TAIL_OPS = ("Add", "Reshape", "Transpose")  # after the weighted sums: summed, ungrouped


@dataclass(frozen=True)
class AttentionHeads:
    """The decoder's attention sizes, as the package's text config gives them."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> AttentionHeads:
        text = CrossLMMConfig.from_dict(manifest.model_config).text_config
        return cls(
            text.num_hidden_layers,
            text.num_attention_heads,
            text.num_key_value_heads,
            text.head_dim,
        )


def shared_kv_specs(
    manifest: Manifest, kv_dtype: str = "float32"
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The rewritten LLM graph's inputs and outputs (float32, the cache ``kv_dtype``),
    from the contract."""
    config = CrossLMMConfig.from_dict(manifest.model_config)
    limits = ExportLimits(manifest.limits["max_frames"], manifest.limits["max_context"])
    spec = llm_spec(config, limits, "float32", shared_kv=True, kv_dtype=kv_dtype)
    return spec.inputs, spec.outputs


@dataclass
class _Layer:
    """One decoder layer's attention: its 3-D rotated q/k, v, and the nodes to replace."""

    index: int
    query: ir.Value  # [1, L, H·hd] after RotaryEmbedding
    key: ir.Value  # [1, L, kvh·hd] after RotaryEmbedding
    value: ir.Value  # [1, L, kvh·hd]
    output: ir.Value  # [1, L, H·hd]: what o_proj reads
    nodes: list[ir.Node]
    # The un-rotated [q ; k ; v] projection and (cos, sin, position_ids) when the op can
    # rotate q and k itself (both RoPEs alike): then it reads that instead of the three.
    packed: ir.Value | None = None
    rotary: tuple[ir.Value, ...] = ()


def fuse_group_query_attention(graph: ir.Graph, heads: AttentionHeads) -> int:
    """Rewrite every decoder layer's attention (all or none); return how many were."""
    width = heads.num_heads * heads.head_dim
    layers = [_match_layer(graph, i, width) for i in range(heads.num_layers)]
    if not layers or any(layer is None for layer in layers):
        return 0
    int32 = ir.TensorType(ir.DataType.INT32)
    seqlens = ir.Value(name=SEQLENS_INPUT, type=int32, shape=ir.Shape([1]))
    total = ir.Value(name=TOTAL_LENGTH_INPUT, type=int32, shape=ir.Shape([]))
    graph.inputs.extend([seqlens, total])
    for layer in layers:
        assert layer is not None
        _replace_layer(graph, layer, heads, seqlens, total)
    if CONTRIB not in graph.opset_imports:
        graph.opset_imports[CONTRIB] = 1
    return len(layers)


def _match_layer(graph: ir.Graph, index: int, query_width: int) -> _Layer | None:
    """Layer ``index``'s attention, or None where the graph is not the exported pattern."""
    outputs = {v.name: v for v in graph.outputs}
    inputs = {v.name: v for v in graph.inputs}
    present_key, present_value = (outputs.get(n) for n in present_names(index))
    past = [inputs.get(n) for n in past_names(index)]
    if present_key is None or present_value is None or None in past:
        return None
    key = _view_source(present_key, "RotaryEmbedding")
    value = _view_source(present_value, "Split")
    split = value.producer() if value is not None else None
    if key is None or value is None or split is None or len(split.outputs) != 3:
        return None
    query = _rotated(split.outputs[0])
    query_view = sole_user(query, "Reshape") if query is not None else None
    past_key, past_value = past
    if query is None or query_view is None or past_key is None or past_value is None:
        return None
    sources = [query_view.outputs[0], present_key, present_value, past_key, past_value]
    layer = _region(graph, index, (query, key, value), sources, query_width)
    if layer is not None:
        layer.packed, layer.rotary = _packed_rotary(split, query, key)
    return layer


def _packed_rotary(
    split: ir.Node, query: ir.Value, key: ir.Value
) -> tuple[ir.Value | None, tuple[ir.Value, ...]]:
    """The Split's input and the RoPEs' (cos, sin, position_ids), if the op can take them."""
    q_rope, k_rope = query.producer(), key.producer()
    assert q_rope is not None and k_rope is not None  # matched as RotaryEmbedding outputs
    alike = list(q_rope.inputs[1:]) == list(k_rope.inputs[1:]) and len(q_rope.inputs) == 4
    plain = all(_interleaved(rope) == 0 for rope in (q_rope, k_rope))
    axis = split.attributes.get("axis")
    last = axis is not None and axis.as_int() in (-1, 2)
    in_order = k_rope.inputs[0] is split.outputs[1]  # [q ; k ; v], as the op reads it packed
    if not (alike and plain and last and in_order) or split.inputs[0] is None:
        return None, ()
    positions, cos, sin = q_rope.inputs[1:]
    assert positions is not None and cos is not None and sin is not None
    return split.inputs[0], (cos, sin, positions)


def _interleaved(rope: ir.Node) -> int:
    attribute = rope.attributes.get("interleaved")
    return attribute.as_int() if attribute is not None else 0


def _qkv_inputs(layer: _Layer) -> list[ir.Value | None]:
    """The op's query, key, value: packed and un-rotated, or the three rotated ones."""
    if layer.packed is not None:
        return [layer.packed, None, None]
    return [layer.query, layer.key, layer.value]


def _region(
    graph: ir.Graph,
    index: int,
    qkv: tuple[ir.Value, ir.Value, ir.Value],
    sources: list[ir.Value],
    query_width: int,
) -> _Layer | None:
    """The nodes between the layer's q/K/V views and its ``[1, L, H·hd]`` output."""
    reached = _downstream(sources)
    ordered = [n for n in graph if n in reached]
    wanted = set(sources)
    full = next((n for n in ordered if wanted <= _upstream(n, reached)[1]), None)
    output = full.outputs[0] if full is not None else None
    while output is not None and not _is_attention_output(output, query_width):
        node = sole_user(output)
        output = node.outputs[0] if node is not None and node.op_type in _TAIL_OPS else None
    if output is None:
        return None
    nodes = list(_upstream(output.producer(), reached)[0])
    if any(n.op_type not in ATTENTION_OPS or n.domain != "" for n in nodes):
        return None
    inside = set(nodes)
    for node in nodes:  # nothing but the output may leave the region
        for out in node.outputs:
            if out is not output and any(use.node not in inside for use in out.uses()):
                return None
            if out.is_graph_output():
                return None
    return _Layer(index, *qkv, output, [n for n in ordered if n in inside])


def _replace_layer(
    graph: ir.Graph, layer: _Layer, heads: AttentionHeads, seqlens: ir.Value, total: ir.Value
) -> None:
    """One ``GroupQueryAttention`` in place of ``layer.nodes``; it owns the layer's cache I/O."""
    named = {v.name: v for v in graph.inputs}
    past_key, past_value = (named[n] for n in past_names(layer.index))
    attributes = {
        "num_heads": heads.num_heads,
        "kv_num_heads": heads.num_kv_heads,
        "scale": heads.head_dim**-0.5,
    }
    attention = ir.node(
        "GroupQueryAttention",
        [*_qkv_inputs(layer), past_key, past_value, seqlens, total, *layer.rotary],
        {**attributes, "do_rotary": int(bool(layer.rotary)), "rotary_interleaved": 0},
        domain=CONTRIB,
        num_outputs=3,
        name=f"layers.{layer.index}.group_query_attention",
    )
    scopes = layer.nodes[-1].metadata_props.get(NAME_SCOPES)
    if scopes is not None:  # keep the module path (profiles attribute time by it)
        attention.metadata_props[NAME_SCOPES] = scopes
    attended, present_key, present_value = attention.outputs
    attended.name = f"layers.{layer.index}.attention_out"
    attended.shape, attended.type = layer.output.shape, layer.output.type
    kv_shape = ir.Shape([1, heads.num_kv_heads, "cache_len", heads.head_dim])
    for value in (past_key, past_value):
        value.shape = kv_shape
    graph.insert_before(layer.nodes[0], attention)
    layer.output.replace_all_uses_with(attended)
    for name, new in zip(present_names(layer.index), (present_key, present_value), strict=True):
        position = next(i for i, v in enumerate(graph.outputs) if v.name == name)
        old = graph.outputs[position]
        old.name = f"{name}.unused"
        new.name, new.shape, new.type = name, kv_shape, past_key.type
        graph.outputs[position] = new
    for node in reversed(layer.nodes):
        graph.remove(node, safe=True)


def _view_source(value: ir.Value, op_type: str) -> ir.Value | None:
    """``x`` of ``value = Reshape(x)`` where ``x`` comes from an ``op_type`` node."""
    view = value.producer()
    if view is None or view.op_type != "Reshape" or view.inputs[0] is None:
        return None
    source = view.inputs[0].producer()
    return view.inputs[0] if source is not None and source.op_type == op_type else None


def _rotated(projection: ir.Value) -> ir.Value | None:
    """The ``RotaryEmbedding`` output of ``projection`` (its only use)."""
    node = sole_user(projection, "RotaryEmbedding", CONTRIB)
    return node.outputs[0] if node is not None else None


def _downstream(sources: list[ir.Value]) -> set[ir.Node]:
    """Every node that reads one of ``sources``, directly or not."""
    seen: set[ir.Node] = set()
    stack = [use.node for value in sources for use in value.uses()]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack += [use.node for out in node.outputs for use in out.uses()]
    return seen


def _upstream(first: ir.Node | None, reached: set[ir.Node]) -> tuple[set[ir.Node], set[ir.Value]]:
    """The nodes of ``reached`` that ``first`` depends on (itself included), and what they read."""
    nodes: set[ir.Node] = set()
    values: set[ir.Value] = set()
    stack = [first] if first is not None else []
    while stack:
        node = stack.pop()
        if node in nodes:
            continue
        nodes.add(node)
        for value in node.inputs:
            if value is None:
                continue
            values.add(value)
            producer = value.producer()
            if producer is not None and producer in reached:
                stack.append(producer)
    return nodes, values


def _is_attention_output(value: ir.Value, query_width: int) -> bool:
    shape = value.shape
    return shape is not None and len(shape) == 3 and shape[2] == query_width
