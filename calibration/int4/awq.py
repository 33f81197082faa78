"""AWQ: activation-aware per-channel scales for 4-bit weights, folded into the graph.

For a MatMul ``Y = X W`` a per-input-channel factor ``s`` leaves the product
unchanged (``(X / s) (s W)``) but changes what rounding ``s W`` to 4 bits
loses: channels whose activations are large get finer steps. As in AWQ
(Lin et al., 2023), ``s = mean|x| ** alpha`` (normalised), with ``alpha``
searched on a grid to minimise ``|X W - (X / s) Q(s W)|`` over the calibration
rows the streaming calibration kept (``activation_stats``). All MatMuls that
read the same activation share one ``s`` (their errors are summed). Only
4-bit weights are searched: 8-bit ones (an INT8 head, widened groups) round
finely enough, and the 151 936-wide head would dominate the search time.

``1 / s`` is folded into the op that produces the activation when that op is
a ``Mul`` by a per-channel constant only it reads (the RMSNorm weight before
q/k/v and gate/up), or an elementwise ``Mul`` of two activations one of which
is a weight MatMul's columns (``silu(gate) · up`` before down_proj: ``up``'s
columns are divided, which a 4-bit block scale absorbs exactly); otherwise a
``Mul`` by ``1 / s`` is inserted before the MatMuls (o_proj, DCAL
projections), one elementwise op per activation, which leaves ONNX
Runtime's ``MatMulNBits`` fusion intact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..collect.activation_stats import TensorStats
from .block_quant import BlockScheme, quantize_weight, relative_error

ALPHAS = tuple(i / 10 for i in range(11))  # 0: plain RTN is always a candidate
Transform = Callable[[onnx.NodeProto, np.ndarray], np.ndarray]


def _factors(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    s = np.maximum(mean_abs, 1e-8) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)  # centred on 1


def _loss(rows: np.ndarray, weights: list[np.ndarray], schemes: list[BlockScheme], s) -> float:
    scaled = rows / s
    total = 0.0
    for weight, scheme in zip(weights, schemes, strict=True):
        exact = rows @ weight
        approx = scaled @ quantize_weight(weight * s[:, None], scheme).dequantize(scheme.block_size)
        total += relative_error(exact, approx)
    return total


def search_factors(
    stats: TensorStats, weights: list[np.ndarray], schemes: list[BlockScheme]
) -> tuple[np.ndarray, float, float, float]:
    """The best factors for the MatMuls reading one activation; (s, alpha, loss, RTN loss)."""
    assert stats.reservoir is not None
    rows = stats.reservoir
    results = []
    for alpha in ALPHAS:
        s = _factors(stats.mean_abs, alpha)
        results.append((_loss(rows, weights, schemes, s), alpha, s))
    best = min(results, key=lambda r: r[0])
    return best[2], best[1], best[0], results[0][0]


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def awq_weights(
    model: onnx.ModelProto, schemes: dict[str, BlockScheme], stats: dict[str, TensorStats]
) -> tuple[dict[str, np.ndarray], Transform, dict]:
    """Search AWQ factors for the MatMuls in ``schemes``, fold their inverse into ``model``.

    Returns the factors per MatMul name, the weight transform for
    ``block_quantize_model`` (multiplies rows by ``s``) and a build record
    (alpha per activation, loss against RTN, folded or not).
    """
    inits = {t.name: t for t in model.graph.initializer}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:  # 8-bit weights (head, widened groups) lose too little
        if node.op_type == "MatMul" and schemes.get(node.name, BlockScheme(8)).bits == 4:
            by_input.setdefault(node.input[0], []).append(node)
    factors: dict[str, np.ndarray] = {}
    record: dict[str, dict] = {}
    for activation, nodes in by_input.items():
        found = stats.get(activation)
        if found is None or found.reservoir is None or found.rows == 0:
            continue  # never ran in calibration: plain RTN
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        s, alpha, loss, rtn = search_factors(found, weights, [schemes[n.name] for n in nodes])
        if alpha == 0.0:
            continue  # RTN was best
        for node in nodes:
            factors[node.name] = s
        record[activation] = {"alpha": alpha, "loss": loss, "rtn_loss": rtn}
    transform = apply_factors(model, factors, np.dtype(np.float32))
    folded = _folded_inputs(model)
    for activation, entry in record.items():
        entry["folded"] = activation in folded
    losses = [(e["loss"], e["rtn_loss"]) for e in record.values()]
    summary = {
        "awq_activations": len(record),
        "awq_folded_into_norms": sum(e["folded"] for e in record.values()),
        "awq_loss_vs_rtn": (sum(a for a, _ in losses) / max(sum(b for _, b in losses), 1e-30))
        if losses
        else 1.0,
        "awq_alphas": {k: v["alpha"] for k, v in record.items()},
    }
    return factors, transform, summary


FOLDED_KEY = "crosslmm.awq_folded"


def _folded_inputs(model: onnx.ModelProto) -> set[str]:
    return {p.value for n in model.graph.node for p in n.metadata_props if p.key == FOLDED_KEY}


def apply_factors(
    model: onnx.ModelProto, factors: dict[str, np.ndarray], dtype: np.dtype
) -> Transform:
    """Fold ``1 / s`` of each MatMul's factors into ``model`` upstream of it (in place).

    ``dtype``: the graph's float type. Returns the transform that multiplies
    the MatMul's weight rows by ``s``.
    """
    readers = _consumers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {t.name: t for t in model.graph.initializer}
    by_input: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.name in factors:
            by_input.setdefault(node.input[0], factors[node.name])
    inserted: dict[str, onnx.NodeProto] = {}
    outputs = {o.name for o in model.graph.output}
    for activation, s in by_input.items():
        only_ours = activation not in outputs and all(
            r.name in factors for r in readers.get(activation, [])
        )  # any other reader (a residual, a float MatMul) needs the unscaled value
        source = producer.get(activation)
        folded = only_ours and (
            _fold_into_producer(model, source, s, inits, readers)
            or _fold_into_columns(source, s, inits, readers, producer)
        )
        if not folded:
            inserted[activation] = _scale_node(model, activation, s, dtype)
    if inserted:
        _insert_scales(model, inserted, factors)

    def transform(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
        found = factors.get(node.name)
        return weight if found is None else weight * found[:, None]

    return transform


def _fold_into_producer(model: onnx.ModelProto, producer, s, inits, readers) -> bool:
    """Divide the per-channel constant of a ``Mul`` producer by ``s``; False if none.

    A constant other nodes also read (the exporter shares identical initializers,
    e.g. RMSNorm weights that are all ones) gets a private scaled copy.
    """
    if producer is None or producer.op_type != "Mul":
        return False
    for index, name in enumerate(producer.input):
        tensor = inits.get(name)
        if tensor is None:
            continue
        value = numpy_helper.to_array(tensor)
        if value.shape[-1:] != s.shape or value.size != s.size:
            continue
        scaled = (value.astype(np.float32) / s.reshape(value.shape)).astype(value.dtype)
        if len(readers.get(name, [])) == 1:
            tensor.CopyFrom(numpy_helper.from_array(scaled, name))
        else:
            private = f"{producer.output[0]}_awq_weight"
            model.graph.initializer.append(numpy_helper.from_array(scaled, private))
            producer.input[index] = private
        producer.metadata_props.add(key=FOLDED_KEY, value=producer.output[0])
        return True
    return False


def _fold_into_columns(product, s, inits, readers, producer) -> bool:
    """Divide the columns behind one factor of ``product = a · b`` by ``s``; False if none.

    The factor must be a weight MatMul's output, or one part of a ``Split`` of it
    along the last axis (the fused gate/up), read by nothing else.
    """
    if product is None or product.op_type != "Mul" or len(product.input) != 2:
        return False
    for factor in product.input:
        found = _weight_columns(factor, s.size, inits, readers, producer)
        if found is None:
            continue
        tensor, start = found
        weight = numpy_helper.to_array(tensor)
        scaled = weight.astype(np.float32)
        scaled[:, start : start + s.size] /= s[None, :]
        tensor.CopyFrom(numpy_helper.from_array(scaled.astype(weight.dtype), tensor.name))
        product.metadata_props.add(key=FOLDED_KEY, value=product.output[0])
        return True
    return False


def _weight_columns(
    value: str, width: int, inits, readers, producer
) -> tuple[onnx.TensorProto, int] | None:
    """(weight initializer, first column) that ``value`` is, or None."""
    if len(readers.get(value, [])) != 1:
        return None
    node, start = producer.get(value), 0
    if node is not None and node.op_type == "Split":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        sizes = inits.get(node.input[1]) if len(node.input) > 1 else None
        if axis != -1 or sizes is None:
            return None
        parts = numpy_helper.to_array(sizes).tolist()
        index = list(node.output).index(value)
        start, value, node = sum(parts[:index]), node.input[0], producer.get(node.input[0])
        if parts[index] != width or len(readers.get(value, [])) != 1:
            return None
    weight = inits.get(node.input[1]) if node is not None and node.op_type == "MatMul" else None
    if weight is None or len(readers.get(weight.name, [])) != 1 or len(weight.dims) != 2:
        return None
    return weight, start


def _scale_node(
    model: onnx.ModelProto, activation: str, s: np.ndarray, dtype: np.dtype
) -> onnx.NodeProto:
    """``activation * (1 / s)`` in the graph's float type."""
    name = f"{activation}_awq_inverse"
    model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(dtype), name))
    return helper.make_node("Mul", [activation, name], [f"{activation}_awq"], f"{name}_Mul")


def _insert_scales(
    model: onnx.ModelProto, inserted: dict[str, onnx.NodeProto], factors: dict
) -> None:
    """Put each ``Mul`` just before the first MatMul that reads its activation; rewire."""
    nodes = []
    placed: set[str] = set()
    for node in model.graph.node:
        source = node.input[0] if node.op_type == "MatMul" and node.name in factors else None
        if source in inserted:
            if source not in placed:
                nodes.append(inserted[source])
                placed.add(source)
            node.input[0] = inserted[source].output[0]
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
