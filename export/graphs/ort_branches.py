"""Each DCAL's V2V branch under an ``If``: decode steps skip it (``onnx/int4`` only).

A DCAL layer runs two cross-attentions on the chunk ``[text ; visual]``:
T2V for the text rows and V2V for the visual rows. A decode step, a question
and every later turn have no visual rows, yet the exported graph still runs
the V2V branch's ~24 nodes on empty tensors (two 4-bit products among them),
for every DCAL. Here that branch becomes the ``then`` graph of an ``If`` on
"the chunk has visual rows"; the ``else`` graph passes the (empty) visual
rows through, which is what the branch returns for them.

ONNX Runtime looks a blocked weight up only in the graph that holds its
``MatMul`` when it fuses ``DequantizeLinear`` + ``MatMul`` into
``MatMulNBits``, so the weights only the branch reads move into the
``then`` graph with it. The pass works on the ``ModelProto`` after
``ort_fusions``' other rewrites.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph_passes import NAME_SCOPES

V2V_NORM = re.compile(r"\.dcal\.(\d+)\.v2v_norm'")  # the branch's first module, in NAME_SCOPES
ZERO = "v2v_branch.zero"


@dataclass
class _Branch:
    """One DCAL's V2V branch: its visual rows, its nodes (graph order) and its output."""

    index: int
    visual: str
    nodes: list[onnx.NodeProto]
    output: str


def branch_v2v(model: onnx.ModelProto) -> int:
    """Put every DCAL's V2V branch under an ``If`` (in place); how many were."""
    graph, made = model.graph, 0
    for index in _dcal_indices(graph):
        branch = _match(graph, index)  # matched anew: wrapping rebuilds graph.node
        if branch is None:
            continue
        if not made:
            graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), ZERO))
        _wrap(graph, branch)
        made += 1
    return made


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and, recursively, those of its ``If`` branches."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes += all_nodes(attribute.g)
    return nodes


def _scopes(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), "")


def _dcal_indices(graph: onnx.GraphProto) -> list[int]:
    found = {int(m.group(1)) for n in graph.node if (m := V2V_NORM.search(_scopes(n)))}
    return sorted(found)


def _match(graph: onnx.GraphProto, index: int) -> _Branch | None:
    """DCAL ``index``'s branch: from its norm's input to the residual Add that ends it."""
    scope = f".dcal.{index}.v2v_norm'"
    norm = next((n for n in graph.node if scope in _scopes(n)), None)
    if norm is None:
        return None
    visual = norm.input[0]
    readers = _readers(graph)
    residual = [n for n in readers.get(visual, []) if n.op_type == "Add"]
    if len(residual) != 1:
        return None
    output = residual[0].output[0]
    memory = [f"v2v_key.{index}", f"v2v_value.{index}"]
    reached = _downstream(readers, [visual, *memory])
    inside = _upstream(graph, output, reached)
    inside |= _private_constants(graph, readers, inside)
    for node in graph.node:
        for value in node.output if id(node) in inside else ():
            leaves = any(id(r) not in inside for r in readers.get(value, []))
            if value != output and (leaves or value in {o.name for o in graph.output}):
                return None
    nodes = [n for n in graph.node if id(n) in inside]
    return _Branch(index, visual, nodes, output)


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _downstream(readers: dict[str, list[onnx.NodeProto]], sources: list[str]) -> set[int]:
    """ids of the nodes that read ``sources``, directly or not."""
    seen: set[int] = set()
    stack = [r for s in sources for r in readers.get(s, [])]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack += [r for out in node.output for r in readers.get(out, [])]
    return seen


def _upstream(graph: onnx.GraphProto, output: str, reached: set[int]) -> set[int]:
    """ids of the nodes of ``reached`` that ``output`` depends on."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[int] = set()
    stack = [producer[output]]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack += [p for i in node.input if (p := producer.get(i)) is not None and id(p) in reached]
    return seen


def _private_constants(graph: onnx.GraphProto, readers, inside: set[int]) -> set[int]:
    """Nodes on initializers alone (the weights' DequantizeLinear) read only inside."""
    constants = {t.name for t in graph.initializer}
    found: set[int] = set()
    for node in graph.node:
        if id(node) in inside or not all(i in constants or not i for i in node.input):
            continue
        users = [r for out in node.output for r in readers.get(out, [])]
        if users and all(id(r) in inside for r in users):
            found.add(id(node))
    return found


def _wrap(graph: onnx.GraphProto, branch: _Branch) -> None:
    """Replace the branch's nodes by Shape, Greater and an ``If`` holding them."""
    name = f"dcal.{branch.index}.v2v"
    ids = {id(n) for n in branch.nodes}
    read_inside = {i for n in branch.nodes for i in n.input}
    read_outside = {i for n in graph.node if id(n) not in ids for i in n.input}
    private = [t for t in graph.initializer if t.name in read_inside - read_outside]
    kept = [t for t in graph.initializer if t.name not in {p.name for p in private}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inner = f"{branch.output}.rows"  # a subgraph may not define a name the If defines
    last = next(n for n in branch.nodes if branch.output in n.output)
    last.output[list(last.output).index(branch.output)] = inner
    result = helper.make_tensor_value_info(inner, onnx.TensorProto.FLOAT, None)
    then_graph = helper.make_graph(branch.nodes, f"{name}.rows", [], [result], private)
    passed = f"{branch.output}.no_rows"
    else_graph = helper.make_graph(
        [helper.make_node("Identity", [branch.visual], [passed], f"{name}.no_rows")],
        f"{name}.no_rows",
        [],
        [helper.make_tensor_value_info(passed, onnx.TensorProto.FLOAT, None)],
    )
    rows, has_rows = f"{name}.rows", f"{name}.has_rows"
    condition = [
        helper.make_node("Shape", [branch.visual], [rows], f"{name}.count", start=1, end=2),
        helper.make_node("Greater", [rows, ZERO], [has_rows], f"{name}.has_rows"),
    ]
    choose = helper.make_node(
        "If", [has_rows], [branch.output], f"{name}.if", then_branch=then_graph,
        else_branch=else_graph,
    )  # fmt: skip
    choose.metadata_props.add(key=NAME_SCOPES, value=_scopes(branch.nodes[0]))
    nodes = [n for n in graph.node if id(n) not in ids]
    first_reader = next(i for i, n in enumerate(nodes) if branch.output in n.input)
    del graph.node[:]
    graph.node.extend([*nodes[:first_reader], *condition, choose, *nodes[first_reader:]])
