"""Rewrites of an exported graph that ONNX Runtime and TensorRT do not do for us.

Both passes keep the graph in standard ONNX ops (``lint-trt`` accepts them) and
keep the exporter's module path on every weight MatMul, which the INT8 recipes
select by.
"""

from __future__ import annotations

import ast

import numpy as np
import onnx_ir as ir

# Node metadata the dynamo exporter writes: the module stack, innermost last but one.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CONTRIB = "com.microsoft"  # ONNX Runtime's contrib-op domain


def sole_user(value: ir.Value, op_type: str | None = None, domain: str = "") -> ir.Node | None:
    """The one node reading ``value`` (not a graph output), of ``op_type`` in ``domain``
    when given; None otherwise."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0].node
    wanted = op_type is None or (node.op_type == op_type and node.domain == domain)
    return node if wanted else None


def fold_weight_transposes(graph: ir.Graph) -> int:
    """Store ``Transpose(W)`` of single-use weights pre-transposed; return how many.

    torch's optimizer folds only tensors of up to 8192 elements, so a real
    model would keep a ``Transpose`` in front of every MatMul weight: ONNX
    Runtime would transpose (and briefly hold twice) each weight at load and
    an INT8 quantizer would not see the weight as a MatMul constant. A weight
    with other uses (the tied embedding, also a Gather table) keeps its
    Transpose so that it is stored once.
    """
    folded = 0
    for node in list(graph):
        source = node.inputs[0] if node.op_type == "Transpose" and node.inputs else None
        if source is None or not source.is_initializer() or source.const_value is None:
            continue
        if len(source.uses()) != 1 or node.outputs[0].is_graph_output():
            continue
        perm = node.attributes["perm"].as_ints()
        array = np.ascontiguousarray(source.const_value.numpy().transpose(perm))
        weight = add_initializer(graph, f"{source.name}.T", array)
        node.outputs[0].replace_all_uses_with(weight)
        graph.remove(node, safe=True)
        _drop_initializer(graph, source)
        folded += 1
    return folded


def fuse_sibling_matmuls(graph: ir.Graph) -> int:
    """Merge weight MatMuls of one module that read the same input; return how many groups.

    q/k/v and gate/up read the same normed hidden state: one MatMul over the
    concatenated weights (and one Add over the concatenated biases) followed by
    a ``Split`` gives the same columns. A decode step is a row times each
    weight, so fewer, wider products mean fewer thread-pool dispatches and
    longer streaming reads (measured on the 0.5B shape: about 2 % more tok/s).
    Only siblings (same parent module, as the exporter recorded it) are merged,
    so every fused node still names one block for the INT8 recipes.
    """
    groups: dict[tuple[ir.Value, str], list[ir.Node]] = {}
    for node in graph:
        parent, x = _module_path(node).rpartition(".")[0], node.inputs[0]
        if parent and x is not None and _is_weight_matmul(node):
            groups.setdefault((x, parent), []).append(node)
    siblings = [(x, nodes) for (x, _), nodes in groups.items() if len(nodes) > 1]
    for x, nodes in siblings:
        _fuse(graph, x, nodes)
    return len(siblings)


def innermost_module(name_scopes: str) -> str:
    """The innermost module path of a ``NAME_SCOPES`` value ('' if it names none)."""
    scopes = ast.literal_eval(name_scopes)
    return str(scopes[-2]) if len(scopes) >= 2 else ""


def _module_path(node: ir.Node) -> str:
    return innermost_module(node.metadata_props.get(NAME_SCOPES, "[]"))


def _is_weight_matmul(node: ir.Node) -> bool:
    """A MatMul of an activation by a 2-D weight that nothing else reads."""
    if node.op_type != "MatMul" or node.domain != "" or len(node.inputs) != 2:
        return False
    weight = node.inputs[1]
    return (
        weight is not None
        and weight.is_initializer()
        and weight.const_value is not None
        and len(weight.const_value.shape) == 2
        and len(weight.uses()) == 1
        and not node.outputs[0].is_graph_output()
    )


def _bias_add(matmul: ir.Node) -> ir.Node | None:
    """The ``Add`` of a 1-D bias that is the only reader of ``matmul``'s output."""
    uses = list(matmul.outputs[0].uses())
    if len(uses) != 1 or uses[0].node.op_type != "Add":
        return None
    add = uses[0].node
    bias = add.inputs[1 - uses[0].idx]
    if bias is None or not bias.is_initializer() or bias.const_value is None:
        return None
    if tuple(bias.const_value.shape) != (_width(matmul.inputs[1]),) or len(bias.uses()) != 1:
        return None
    return None if add.outputs[0].is_graph_output() else add


def _fuse(graph: ir.Graph, x: ir.Value, matmuls: list[ir.Node]) -> None:
    """Replace ``matmuls`` (and their bias Adds, if all have one) by MatMul, Add, Split."""
    found = [_bias_add(node) for node in matmuls]
    adds = [add for add in found if add is not None]
    adds = adds if len(adds) == len(matmuls) else []  # biases merge only if all have one
    weights = [_initializer_input(node, 1) for node in matmuls]
    biases = [_bias_of(add) for add in adds]
    new = _fused_nodes(graph, x, matmuls, weights, biases)
    graph.insert_before(matmuls[0], new)
    for end, part in zip(adds or matmuls, new[-1].outputs, strict=True):
        part.shape, part.type = end.outputs[0].shape, end.outputs[0].type
        end.outputs[0].replace_all_uses_with(part)
    graph.remove([*matmuls, *adds], safe=True)
    for value in [*weights, *biases]:
        _drop_initializer(graph, value)


def _fused_nodes(
    graph: ir.Graph,
    x: ir.Value,
    matmuls: list[ir.Node],
    weights: list[ir.Value],
    biases: list[ir.Value],
) -> list[ir.Node]:
    """MatMul over the concatenated weights, Add of the concatenated biases, Split."""
    name = f"{matmuls[0].name}.fused"
    meta = _fused_metadata(matmuls, name)
    module = innermost_module(meta[NAME_SCOPES])  # e.g. ...layers.0.self_attn.q_k_v_proj
    if f"{module}.weight" in graph.initializers:  # a block applied to two inputs (DCAL MLP)
        module = f"{module}.{name}"
    arrays = [_array(w) for w in weights]  # [D, n_i]
    merged = np.concatenate(arrays, axis=1)  # [D, sum n_i]
    weight = add_initializer(graph, f"{module}.weight", merged)
    new = [ir.node("MatMul", [x, weight], name=name, metadata_props=meta)]
    if biases:
        bias = np.concatenate([_array(b) for b in biases])  # [sum n_i]
        added = [new[-1].outputs[0], add_initializer(graph, f"{module}.bias", bias)]
        new.append(ir.node("Add", added, name=f"{name}.add"))
    widths = np.array([a.shape[1] for a in arrays], np.int64)
    parts = [new[-1].outputs[0], add_initializer(graph, f"{module}.split", widths)]
    new.append(ir.node("Split", parts, {"axis": -1}, num_outputs=len(arrays), name=f"{name}.split"))
    for i, node in enumerate(new):
        for j, value in enumerate(node.outputs):
            value.name = f"{name}.out{i}.{j}"
    return new


def _bias_of(add: ir.Node) -> ir.Value:
    """The initializer input of a bias ``Add``."""
    return next(v for v in add.inputs if v is not None and v.is_initializer())


def _initializer_input(node: ir.Node, index: int) -> ir.Value:
    """Input ``index`` of ``node``, which the caller checked is an initializer."""
    value = node.inputs[index]
    assert value is not None and value.const_value is not None, node.name
    return value


def _array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None, value.name
    return value.const_value.numpy()


def _width(value: ir.Value | None) -> int:
    """Columns of a 2-D weight initializer (from its shape, without reading the data)."""
    assert value is not None and value.const_value is not None
    width = value.const_value.shape[1]
    assert isinstance(width, int), value.name  # a stored tensor's dims are static
    return width


def _drop_initializer(graph: ir.Graph, value: ir.Value) -> None:
    """Forget an initializer nothing reads any more."""
    if value.name is not None:
        graph.initializers.pop(value.name)


def _fused_metadata(matmuls: list[ir.Node], name: str) -> dict[str, str]:
    """The first MatMul's metadata, its module path naming every part (``q_k_v_proj``)."""
    meta = dict(matmuls[0].metadata_props)
    scopes = ast.literal_eval(meta[NAME_SCOPES])
    parent = scopes[-2].rpartition(".")[0]
    leaves = [_module_path(m).rpartition(".")[2].removesuffix("_proj") for m in matmuls]
    meta[NAME_SCOPES] = repr([*scopes[:-2], f"{parent}.{'_'.join(leaves)}_proj", name])
    return meta


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a graph initializer named ``name``."""
    value = ir.Value(name=name, const_value=ir.tensor(array))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value
