"""A decode step's ``GroupQueryAttention`` with each KV head's query heads as rows.

ONNX Runtime's CPU kernel of the op multiplies each query head by its KV
head's cache on its own: at one new token that is ``num_heads`` products of
one row, and every cached K/V row is read ``G = num_heads / kv_num_heads``
times (7 for Qwen2.5-0.5B). At 4 086 cached positions that read is most of
the attention's time. Laid out as ``G`` query rows of ``kv_num_heads`` heads,
the same op multiplies ``G`` rows at once per KV head and reads the cache
once (``benchmarks/attention_reads.py``, formulation ``gqa_rows``).

So each decoder layer's op (``ort_attention``) becomes ``If(one token after
at least GROUPED_FROM_PAST[cache type] cached positions)``: then the grouped form, else
the op as it was (prefill chunks of many tokens are already many rows; at
short contexts the one-row products cost no more). The grouped op sees ``G``
new tokens where there is one:

- its key and value inputs are the token's, repeated ``G`` times: the op
  writes them at positions ``P .. P+G-1``. Position ``P`` holds the real
  entry; the ``G-1`` rows after it are scratch that the next chunk
  overwrites, so the cache needs ``G-1`` rows beyond its capacity (the
  artifact's ``kv_spare_rows``);
- every row is rotated at the token's position (``position_ids`` repeated);
- row ``j`` would see the scratch rows ``P+1 .. P+j`` causally:
  ``attention_bias`` hides them (``-inf``), so every row attends to exactly
  the positions ``0 .. P``, as the op at one row does;
- the op checks that its RoPE tables reach ``P+G-1``: ``ort_fusions`` writes
  them ``G-1`` rows longer than the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ...runtime.model.contract import POSITIONS_INPUT, SEQLENS_INPUT, TOTAL_LENGTH_INPUT
from .graph_passes import CONTRIB, add_initializer
from .ort_attention import AttentionHeads

# Cached positions from which a decode step is grouped, by the cache's element type.
# float32: below 1024 the op's one-row products are as fast (decode_ab on the 0.5B shape:
# +2-3 % grouped at 256 and 512 past, even at 1024, faster from 2048). float16: the
# one-row op converts its KV head's cache to float32 once per query head, and grouped
# steps were faster at every past measured (decode_ab: 15.57 -> 13.63 ms at 512).
GROUPED_FROM_PAST = {"float32": 1024, "float16": 0}


def spare_rows(heads: AttentionHeads) -> int:
    """Cache rows the grouped op writes beyond the token it adds."""
    return heads.num_heads // heads.num_kv_heads - 1


def group_decode_queries(graph: ir.Graph, heads: AttentionHeads, min_past: int = 0) -> int:
    """Put each ``GroupQueryAttention`` of ``graph`` under ``If(one token after at least
    min_past cached)``; return how many."""
    group = heads.num_heads // heads.num_kv_heads
    attentions = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == CONTRIB]
    named = {v.name: v for v in graph.inputs}
    if group < 2 or not attentions or POSITIONS_INPUT not in named:
        return 0
    shared = _Shared.build(graph, named, heads, group, min_past, _cache_type(attentions[0]))
    for index, attention in enumerate(attentions):
        _wrap(graph, attention, shared, heads, index)
    return len(attentions)


@dataclass(frozen=True)
class _Shared:
    """What every layer's grouped op reads alike, computed once per step."""

    grouped: ir.Value  # [1] bool: one token, after at least min_past cached positions
    total: ir.Value  # [] int32: total_sequence_length + G - 1
    seqlens: ir.Value  # [1] int32: seqlens_k + G - 1
    positions: ir.Value  # [1, G] int64: the token's position on every row
    bias: ir.Value  # [1, 1, G, total + G - 1], the cache's type: -inf on row j's scratch rows
    heads_shape: ir.Value  # [1, kvh, G, hd]: the query as the projection lays it out
    rows_shape: ir.Value  # [1, G, kvh·hd]: the op's query, key and value
    row_heads_shape: ir.Value  # [1, G, kvh, hd]
    token_shape: ir.Value  # [1, 1, H·hd]
    split: ir.Value  # widths of the packed [q ; k ; v]

    @classmethod
    def build(
        cls,
        graph: ir.Graph,
        named: dict,
        heads: AttentionHeads,
        group: int,
        min_past: int,
        cache_type: np.dtype,
    ) -> _Shared:
        first = next(iter(graph))
        seqlens, total, positions = (
            named[n] for n in (SEQLENS_INPUT, TOTAL_LENGTH_INPUT, POSITIONS_INPUT)
        )
        kvh, hd = heads.num_kv_heads, heads.head_dim

        def const(name: str, array: np.ndarray) -> ir.Value:
            return add_initializer(graph, f"grouped_decode.{name}", array)

        def add(op: str, inputs: list, name: str, **attributes) -> ir.Value:
            node = ir.node(op, inputs, attributes, name=f"grouped_decode.{name}")
            node.outputs[0].name = f"grouped_decode.{name}"
            graph.insert_before(first, node)
            return node.outputs[0]

        extra = np.int32(group - 1)
        length = add("Shape", [positions], "chunk_len", start=1, end=2)  # [1]
        one_token = add("Equal", [length, const("one", np.array([1], np.int64))], "one_token")
        long_past = add("Greater", [total, const("min_total", np.int32(min_past))], "long_past")
        last = add("Slice", [positions, *(const(n, np.array([v])) for n, v in _LAST)], "last")
        # bias: row j hides the scratch positions P+1 .. P+j (P = seqlens_k at one token)
        rows_total = add("Add", [total, const("extra", extra)], "total")
        cache_positions = add(
            "Range", [const("zero", np.int32(0)), rows_total, const("step", np.int32(1))], "range"
        )  # [T]
        row_index = const("row_index", np.arange(group, dtype=np.int32)[:, None])  # [G, 1]
        after_token = add("Greater", [cache_positions, seqlens], "after_token")
        row_end = add("Add", [seqlens, row_index], "row_end")  # [G, 1]
        within_row = add("LessOrEqual", [cache_positions, row_end], "within_row")
        hidden = add("And", [after_token, within_row], "hidden")  # [G, T]
        # the op takes its bias in its cache's type
        zero, minus_inf = (np.array(v, cache_type) for v in (0.0, -np.inf))
        bias = add("Where", [hidden, const("minus_inf", minus_inf), const("zero_f", zero)], "bias")
        widths = [heads.num_heads, kvh, kvh]  # packed [q ; k ; v], in heads
        return cls(
            grouped=add("And", [one_token, long_past], "grouped"),
            total=rows_total,
            seqlens=add("Add", [seqlens, const("extra_1d", extra[None])], "seqlens"),
            positions=add("Expand", [last, const("positions_shape", np.array([1, group]))], "pos"),
            bias=add("Unsqueeze", [bias, const("axes", np.array([0, 1]))], "bias_4d"),
            heads_shape=const("heads_shape", np.array([1, kvh, group, hd])),
            rows_shape=const("rows_shape", np.array([1, group, kvh * hd])),
            row_heads_shape=const("row_heads_shape", np.array([1, group, kvh, hd])),
            token_shape=const("token_shape", np.array([1, 1, heads.num_heads * hd])),
            split=const("split", np.array(widths) * hd),
        )


_LAST = (("last_start", -1), ("last_end", np.iinfo(np.int64).max), ("last_axis", 1))


def _cache_type(attention: ir.Node) -> np.dtype:
    """The element type of the op's cache (float32, or float16 after ``ort_half_cache``)."""
    cache = attention.inputs[3]
    if cache is None or cache.dtype is None:
        return np.dtype(np.float32)
    return np.dtype(cache.dtype.numpy())


def _wrap(
    graph: ir.Graph, attention: ir.Node, shared: _Shared, heads: AttentionHeads, index: int
) -> None:
    """Replace ``attention`` by ``If(grouped) {grouped op} else {a copy of attention}``."""
    chunk = ir.node(  # a copy: a node removed from a graph loses its inputs
        "GroupQueryAttention",
        list(attention.inputs),
        {name: attr.value for name, attr in attention.attributes.items()},
        domain=CONTRIB,
        num_outputs=3,
        name=f"layers.{index}.chunk.group_query_attention",
    )
    chunk.metadata_props.update(attention.metadata_props)
    branch = ir.node(
        "If",
        [shared.grouped],
        {
            "then_branch": _grouped_branch(attention, shared, heads, index),
            "else_branch": ir.Graph((), chunk.outputs, nodes=[chunk], name=f"layers.{index}.chunk"),
        },
        num_outputs=3,
        name=f"layers.{index}.attention_by_chunk",
    )
    graph.insert_before(attention, branch)
    for old, copy, new in zip(attention.outputs, chunk.outputs, branch.outputs, strict=True):
        copy.name, copy.shape, copy.type = f"layers.{index}.chunk.{old.name}", old.shape, old.type
        new.shape, new.type = old.shape, old.type
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        new.name, old.name = old.name, None
    graph.remove(attention, safe=True)


def _grouped_branch(
    attention: ir.Node, shared: _Shared, heads: AttentionHeads, index: int
) -> ir.Graph:
    """The op at one token with the ``G`` query heads of each KV head as rows."""
    inputs = list(attention.inputs) + [None] * (9 - len(attention.inputs))
    nodes: list[ir.Node] = []
    prefix = f"layers.{index}.grouped."

    def add(op: str, args: list, name: str, outputs: int = 1, domain: str = "", **attrs):
        node = ir.node(op, args, attrs, domain=domain, num_outputs=outputs, name=prefix + name)
        for i, value in enumerate(node.outputs):
            value.name = prefix + (name if outputs == 1 else f"{name}.{i}")
        nodes.append(node)
        return node.outputs if outputs > 1 else node.outputs[0]

    query, key, value = inputs[:3]
    if key is None or value is None:  # packed [q ; k ; v] of one token
        query, key, value = add("Split", [query, shared.split], "split", outputs=3, axis=-1)
    heads_view = add("Reshape", [query, shared.heads_shape], "query_heads")  # [1, kvh, G, hd]
    by_row = add("Transpose", [heads_view], "query_by_row", perm=[0, 2, 1, 3])  # [1, G, kvh, hd]
    query_rows = add("Reshape", [by_row, shared.rows_shape], "query_rows")  # [1, G, kvh·hd]
    key_rows = add("Expand", [key, shared.rows_shape], "key_rows")  # [1, G, kvh·hd], one key
    value_rows = add("Expand", [value, shared.rows_shape], "value_rows")
    cos, sin = inputs[7:9]
    rotates = cos is not None
    feeds = [query_rows, key_rows, value_rows, *inputs[3:5], shared.seqlens, shared.total]
    feeds += [cos, sin, shared.positions if rotates else None, shared.bias]
    attributes = {n: a.value for n, a in attention.attributes.items() if n != "num_heads"}
    attended, present_key, present_value = add(
        "GroupQueryAttention",
        feeds,
        "attention",
        outputs=3,
        domain=CONTRIB,
        num_heads=heads.num_kv_heads,  # one query head per KV head and row
        **attributes,
    )
    row_heads = add("Reshape", [attended, shared.row_heads_shape], "out_rows")  # [1, G, kvh, hd]
    by_head = add("Transpose", [row_heads], "out_by_head", perm=[0, 2, 1, 3])  # [1, kvh, G, hd]
    token = add("Reshape", [by_head, shared.token_shape], "out")  # [1, 1, H·hd], heads in order
    return ir.Graph((), [token, present_key, present_value], nodes=nodes, name=prefix + "branch")
