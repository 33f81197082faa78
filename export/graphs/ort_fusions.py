"""Fusions for the graphs only ONNX Runtime runs (``onnx`` artifacts, CPU and CUDA).

A decode step of a 4-bit LLM reads few bytes, so the graph's ~1 500 small
nodes (each an ONNX Runtime dispatch) become a visible part of it. Two
patterns of every decoder layer collapse into contrib ops ONNX Runtime
implements on CPU and CUDA:

- RMSNorm (Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul) and the residual
  Add before it become ``SimplifiedLayerNormalization`` and
  ``com.microsoft::SkipSimplifiedLayerNormalization`` (onnxscript's maintained
  rewrite rules);
- rotate-half RoPE on ``[B, L, heads, hd]`` (Slice, Neg, Slice, Concat, Mul,
  Mul, Add) becomes ``com.microsoft::RotaryEmbedding`` on the projection's
  ``[B, L, heads·hd]`` output, with cos/sin tables of ``max_positions`` rows.

TensorRT parses neither contrib op, so ``onnx-trt`` graphs never get this
pass (``lint-trt`` keeps them standard).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from ...runtime.model.config import CrossLMMConfig
from ...runtime.model.contract import POSITIONS_INPUT
from ...runtime.package.manifest import Manifest
from .graph_passes import CONTRIB, add_initializer, sole_user
from .ort_attention import AttentionHeads, fuse_group_query_attention
from .ort_grouped_decode import group_decode_queries, spare_rows
from .ort_half_cache import cache_in_float16


@dataclass(frozen=True)
class RopeTables:
    """What the RoPE cos/sin tables are made of (the package's text config and limits)."""

    theta: float
    head_dim: int
    max_positions: int

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin [max_positions, head_dim / 2] (float32, computed in float64)."""
        steps = np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim
        angles = np.arange(self.max_positions, dtype=np.float64)[:, None] / self.theta**steps
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_tables(manifest: Manifest) -> RopeTables:
    """The tables a package needs: its text config's RoPE, one row per position it allows."""
    text = CrossLMMConfig.from_dict(manifest.model_config).text_config
    return RopeTables(text.rope_theta, text.head_dim, manifest.limits["max_context"])


def fuse_for_onnx_runtime(
    model: onnx.ModelProto,
    rope: RopeTables,
    heads: AttentionHeads | None = None,
    grouped_from_past: int = 0,
    kv_dtype: str = "float32",
) -> dict[str, int]:
    """Rewrite ``model`` in place with the fusions above; how many of each were made.

    With ``heads``, the decoder's attention also becomes ``GroupQueryAttention``
    (``ort_attention``), which changes the graph's cache inputs and outputs, and a
    decode step after ``grouped_from_past`` cached positions runs it with the query
    heads as rows (``ort_grouped_decode``; ``quantize`` passes the threshold measured
    for its cache type, ``GROUPED_FROM_PAST``); ``kv_dtype`` ``"float16"`` gives the op
    a float16 cache (``ort_half_cache``).
    """
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    if heads is not None:  # the grouped op checks its tables cover its scratch rows too
        rope = replace(rope, max_positions=rope.max_positions + spare_rows(heads))
    graph_model = ir.from_proto(model)
    ShapeInferencePass()(graph_model)  # the RoPE match reads head counts from shapes
    counts = {
        "rms_normalization": fuse_rms_normalization(graph_model),
        "skip_rms_normalization": fuse_skip_rms_normalization(graph_model),
        "rotary_embedding": fuse_rotary_embeddings(graph_model.graph, rope),
    }
    if heads is not None:
        RemoveUnusedNodesPass()(graph_model)  # the RoPE's dead views would look like readers
        counts |= _attention_fusions(graph_model.graph, heads, kv_dtype, grouped_from_past)
    RemoveUnusedNodesPass()(graph_model)  # the fused patterns' constants
    model.CopyFrom(ir.to_proto(graph_model))
    return counts


def _attention_fusions(
    graph: ir.Graph, heads: AttentionHeads, kv_dtype: str, grouped_from_past: int
) -> dict[str, int]:
    """``GroupQueryAttention``, its cache type, then its decode steps in query rows."""
    counts = {"group_query_attention": fuse_group_query_attention(graph, heads)}
    if not counts["group_query_attention"]:
        return counts
    if kv_dtype == "float16":
        counts["float16_cache"] = cache_in_float16(graph)
    counts["grouped_decode"] = group_decode_queries(graph, heads, grouped_from_past)
    return counts


def fuse_rotary_embeddings(graph: ir.Graph, rope: RopeTables) -> int:
    """Replace each rotate-half RoPE of a reshaped projection by ``RotaryEmbedding``."""
    positions = next((v for v in graph.inputs if v.name == POSITIONS_INPUT), None)
    matches = [m for node in graph if (m := _match_rope(node, rope.head_dim)) is not None]
    if positions is None or not matches:
        return 0
    cos_sin = zip(("cos", "sin"), rope.arrays(), strict=True)
    cos, sin = (add_initializer(graph, f"rope.{n}_cache", a) for n, a in cos_sin)
    for match in matches:
        _replace(graph, match, positions, cos, sin)
    if not any(domain == CONTRIB for domain in graph.opset_imports):
        graph.opset_imports[CONTRIB] = 1
    return len(matches)


@dataclass
class _Rope:
    """One matched RoPE: its nodes, the projection [B, L, heads·hd] and the view's shape."""

    nodes: list[ir.Node]
    projection: ir.Value
    view_shape: ir.Value
    heads: int
    output: ir.Value


def _match_rope(neg: ir.Node, head_dim: int) -> _Rope | None:
    """``add(x·cos, cat(-x[..., h:], x[..., :h])·sin)`` with ``x = Reshape(proj)``, from its Neg."""
    if neg.op_type != "Neg" or neg.domain != "":
        return None
    upper = _producer(neg.inputs[0], "Slice")
    x = upper.inputs[0] if upper is not None else None
    view = _producer(x, "Reshape")
    if upper is None or x is None or view is None or not _rank4_heads(x, head_dim):
        return None
    concat = sole_user(neg.outputs[0], "Concat")
    if concat is None or concat.inputs[0] is not neg.outputs[0]:
        return None
    lower = _producer(concat.inputs[1], "Slice")
    times_sin = sole_user(concat.outputs[0], "Mul")
    add = sole_user(times_sin.outputs[0], "Add") if times_sin is not None else None
    if lower is None or lower.inputs[0] is not x or times_sin is None or add is None:
        return None
    times_cos = _producer(_other_input(add, times_sin.outputs[0]), "Mul")
    if times_cos is None or x not in times_cos.inputs:
        return None
    if not (_reads(times_cos, x, "Cos") and _reads(times_sin, concat.outputs[0], "Sin")):
        return None
    if {use.node for use in x.uses()} != {upper, lower, times_cos}:
        return None
    nodes = [upper, neg, lower, concat, times_cos, times_sin, add]
    assert x.shape is not None and view.inputs[0] is not None and view.inputs[1] is not None
    heads = x.shape[2]
    assert isinstance(heads, int)
    return _Rope(nodes, view.inputs[0], view.inputs[1], heads, add.outputs[0])


def _replace(
    graph: ir.Graph, rope: _Rope, positions: ir.Value, cos: ir.Value, sin: ir.Value
) -> None:
    """``Reshape(RotaryEmbedding(projection), view_shape)`` in place of the matched nodes."""
    name = rope.nodes[-1].name or rope.output.name
    rotate = ir.node(
        "RotaryEmbedding",
        [rope.projection, positions, cos, sin],
        {"num_heads": rope.heads, "interleaved": 0},
        domain=CONTRIB,
        name=f"{name}.rotary",
    )
    view = ir.node("Reshape", [rotate.outputs[0], rope.view_shape], name=f"{name}.rotary_view")
    rotate.outputs[0].name = f"{name}.rotary.out"
    view.outputs[0].shape, view.outputs[0].type = rope.output.shape, rope.output.type
    ir.convenience.replace_nodes_and_values(
        graph, rope.nodes[-1], rope.nodes, [rotate, view], [rope.output], [view.outputs[0]]
    )


def _rank4_heads(x: ir.Value, head_dim: int) -> bool:
    """``x`` is [B, L, heads, head_dim] with static heads."""
    shape = x.shape
    return (
        shape is not None and len(shape) == 4 and isinstance(shape[2], int) and shape[3] == head_dim
    )


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain == "" else None


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    others = [v for v in node.inputs if v is not value]
    return others[0] if len(others) == 1 else None


def _reads(mul: ir.Node, x: ir.Value, op_type: str) -> bool:
    """The other factor of ``mul`` (besides ``x``) comes from a ``Cos``/``Sin``, maybe reshaped."""
    factor = _other_input(mul, x)
    while factor is not None and (node := factor.producer()) is not None:
        if node.op_type == op_type:
            return True
        if node.op_type not in ("Unsqueeze", "Reshape", "Expand", "Cast"):
            return False
        factor = node.inputs[0]
    return False
