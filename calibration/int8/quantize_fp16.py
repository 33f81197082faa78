"""INT8 Q/DQ on the fp16 graphs, for TensorRT's strongly typed INT8 builds (``onnx-trt/int8``).

A strongly typed TensorRT network takes every layer's precision from the
ONNX graph, so an INT8 engine with fp16 everywhere else must be built from
the fp16 graph with Q/DQ in it. This module copies the FP32 INT8 graph's
quantization onto the fp16 graph rather than calibrating again: the same
weight MatMuls (paired by the module path the exporter recorded, in graph
order), the same activation scales on their input and output (calibrated
once, read from the FP32 INT8 graph), per-channel symmetric INT8 weights
from the fp16 weights, and the same INT8 cross K/V with per-head scales.

Scales are fp16 and QuantizeLinear/DequantizeLinear take fp16 scales only
from opset 19, so the graph's default-domain opset goes from 18 to 19 by
rewriting its import: every op that changed in opset 19 (Cast, Pad,
Reshape, Equal, AveragePool, ...) only gained types or attributes whose
default is the opset-18 behaviour. ``onnx.version_converter`` is avoided:
it drops the node metadata and loads the weights through shape inference.
ONNX Runtime runs these graphs too, but the package's ``onnx`` INT8
artifact (on the fp32 graphs) is the one it is meant to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...runtime.errors import UserError
from ...runtime.model.contract import LLM, POOLING, ROLES
from ...runtime.package.files import file_sha256
from ...runtime.package.loader import choose_artifacts
from ...runtime.package.manifest import Artifact, FileRef, load_manifest
from ..recipes import WeightNode, weight_nodes
from . import kv_int8
from .quantize import _int8_specs

BACKEND = "onnx-trt"
OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take fp16 scales
QMAX = 127  # symmetric INT8, as ORT quantizes the fp32 graph's weights
# A zero or subnormal fp16 scale loses the range (x / scale overflows): keep it normal.
FP16_TINY = float(np.finfo(np.float16).tiny)


@dataclass(frozen=True)
class MatMulQdq:
    """The activation scales around one quantized MatMul of the FP32 INT8 graph."""

    input: np.ndarray | None
    output: np.ndarray | None


def fp16_scale(value: np.ndarray | float) -> np.ndarray:
    """``value`` as an fp16 scale, at least the smallest normal fp16."""
    return np.maximum(np.asarray(value, np.float32), FP16_TINY).astype(np.float16)


def weight_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (last axis) symmetric INT8 weights and their fp16 scales."""
    w = weight.astype(np.float32)
    amax = np.abs(w).max(axis=tuple(range(w.ndim - 1)))
    scale = fp16_scale(np.where(amax > 0, amax / QMAX, 1.0))
    # Rounded with the fp16 scale the DequantizeLinear multiplies by.
    q = np.clip(np.rint(w / scale.astype(np.float32)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantized_matmuls(model: onnx.ModelProto, base_dir: Path) -> dict[str, MatMulQdq]:
    """MatMul name -> activation scales, for each MatMul whose weight is dequantized INT8."""
    producer = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    inits = {t.name: t for t in model.graph.initializer}

    def scale(node: onnx.NodeProto | None) -> np.ndarray | None:
        return None if node is None else numpy_helper.to_array(inits[node.input[1]], str(base_dir))

    found = {}
    for node in model.graph.node:
        weight = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        dq = producer.get(node.input[0])
        reads = readers.get(node.output[0], [])
        q = next((r for r in reads if r.op_type == "QuantizeLinear"), None)
        dq = dq if dq is not None and dq.op_type == "DequantizeLinear" else None
        found[node.name] = MatMulQdq(scale(dq), _per_tensor(scale(q)))
    return found


def _per_tensor(scale: np.ndarray | None) -> np.ndarray | None:
    """An activation scale; a per-head one belongs to the cross K/V output, not the MatMul."""
    return scale if scale is not None and scale.size == 1 else None


def _by_module(nodes: list[WeightNode]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for node in nodes:
        grouped.setdefault(node.module, []).append(node.name)
    return grouped


def paired_names(fp32: onnx.ModelProto, fp16: onnx.ModelProto, role: str) -> dict[str, str]:
    """fp32 weight MatMul name -> the fp16 graph's: same module path, same rank within it.

    Paired per module rather than by position in the graph: the two exports
    may order independent branches (a DCAL's T2V and V2V paths) differently.
    """
    a, b = _by_module(weight_nodes(fp32, role)), _by_module(weight_nodes(fp16, role))
    if {m: len(v) for m, v in a.items()} != {m: len(v) for m, v in b.items()}:
        raise UserError(
            f"{role}: the fp16 graph's weight MatMuls differ from the fp32 graph's; "
            "export both precisions from the same checkpoint with this crosslmm-edge"
        )
    return {x: y for module, names in a.items() for x, y in zip(names, b[module], strict=True)}


class _Inserter:
    """Adds Q/DQ around MatMuls of one fp16 graph, sharing them per tensor and weight."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.weights = {t.name: t for t in model.graph.initializer}
        self.done: dict[str, str] = {}  # tensor or weight name -> its dequantized name
        self.new_inits: list[onnx.TensorProto] = []

    def _constants(self, name: str, scale: np.ndarray) -> list[str]:
        zero = np.zeros(scale.shape, np.int8)
        self.new_inits += [
            numpy_helper.from_array(scale, f"{name}.int8_scale"),
            numpy_helper.from_array(zero, f"{name}.int8_zero_point"),
        ]
        return [f"{name}.int8_scale", f"{name}.int8_zero_point"]

    def activation(self, tensor: str, scale: np.ndarray, out: str | None = None) -> list:
        """Q then DQ of ``tensor`` (to ``out``, default ``tensor.dequantized``)."""
        constants = self._constants(tensor, fp16_scale(scale))
        out = out or f"{tensor}.dequantized"
        self.done[tensor] = out
        return [
            helper.make_node(
                "QuantizeLinear", [tensor, *constants], [f"{tensor}.int8"], f"{tensor}.quantize"
            ),
            helper.make_node(
                "DequantizeLinear", [f"{tensor}.int8", *constants], [out], f"{tensor}.dequantize"
            ),
        ]

    def weight(self, name: str) -> list:
        """The INT8 weight ``name`` and the DQ that restores it (the fp16 one is dropped later)."""
        q, scale = weight_int8(numpy_helper.to_array(self.weights[name]))
        self.new_inits.append(numpy_helper.from_array(q, f"{name}.int8"))
        constants = self._constants(name, scale)
        self.done[name] = f"{name}.dequantized"
        inputs = [f"{name}.int8", *constants]
        node = helper.make_node(
            "DequantizeLinear", inputs, [self.done[name]], f"{name}.dequantize", axis=q.ndim - 1
        )
        return [node]

    def wrap(self, node: onnx.NodeProto, qdq: MatMulQdq) -> list[onnx.NodeProto]:
        """``node`` with Q/DQ on its input, its weight and its output, in graph order."""
        before: list[onnx.NodeProto] = []
        x, w = node.input[0], node.input[1]
        if qdq.input is not None and x not in self.done:
            before += self.activation(x, qdq.input)
        if w not in self.done:
            before += self.weight(w)
        node.input[0] = self.done.get(x, x) if qdq.input is not None else x
        node.input[1] = self.done[w]
        after: list[onnx.NodeProto] = []
        if qdq.output is not None:  # the MatMul writes y.float; Q/DQ give back y to its readers
            y = node.output[0]
            node.output[0] = f"{y}.float"
            after = self.activation(f"{y}.float", qdq.output, out=y)
        return [*before, node, *after]

    def finish(self) -> None:
        """Add the new constants; drop fp16 weights that nothing reads any more."""
        graph = self.model.graph
        used = {name for node in graph.node for name in node.input}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend([*kept, *self.new_inits])


def quantize_fp16_model(
    fp16: onnx.ModelProto, targets: dict[str, MatMulQdq], scales: dict[str, np.ndarray], role: str
) -> None:
    """Put Q/DQ on the fp16 MatMuls named in ``targets`` and INT8 cross K/V (in place)."""
    inserter = _Inserter(fp16)
    nodes: list[onnx.NodeProto] = []
    for node in fp16.graph.node:
        nodes += inserter.wrap(node, targets[node.name]) if node.name in targets else [node]
    del fp16.graph.node[:]
    fp16.graph.node.extend(nodes)
    inserter.finish()
    if role == POOLING and scales:
        kv_int8.quantize_outputs(fp16, scales, np.dtype(np.float16))
    elif role == LLM and scales:
        kv_int8.dequantize_inputs(fp16, scales, np.dtype(np.float16))
    for opset in fp16.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, OPSET)


def _save(model: onnx.ModelProto, target: Path, external: bool) -> list[Path]:
    """Write ``target`` (weights beside it when the source had them); its files."""
    data = target.with_name(target.name + ".data")
    onnx.save(model, str(target), save_as_external_data=external, location=data.name)
    return [target, *([data] if external else [])]


def trt_int8_graph(
    package_dir: Path, role: str, int8: Artifact, int8_dir: Path, target: Path
) -> list[Path]:
    """Write ``role``'s fp16 graph with the Q/DQ of the FP32 INT8 ``int8`` to ``target``."""
    manifest = load_manifest(package_dir)
    fp32 = choose_artifacts(manifest, "onnx", "fp32").by_role[role]
    fp16 = choose_artifacts(manifest, "onnx", "fp16").by_role[role]
    fp32_model = onnx.load(str(package_dir / fp32.file), load_external_data=False)
    fp16_model = onnx.load(str(package_dir / fp16.file))  # with its weights: they get quantized
    int8_model = onnx.load(str(int8_dir / int8.file), load_external_data=False)
    pairs = paired_names(fp32_model, fp16_model, role)
    targets = {pairs[name]: qdq for name, qdq in quantized_matmuls(int8_model, int8_dir).items()}
    raw = int8.build.get("cross_kv_scales") or {}
    scales = {name: np.maximum(np.asarray(v, np.float32), FP16_TINY) for name, v in raw.items()}
    quantize_fp16_model(fp16_model, targets, scales, role)
    return _save(fp16_model, target, bool(fp16.external_data))


def trt_int8_artifacts(
    package_dir: Path, staging: Path, int8: dict[str, Artifact], int8_dir: Path
) -> dict[str, Artifact]:
    """``onnx-trt/int8`` artifacts in ``staging`` from the package's fp16 graphs and ``int8``.

    ``int8`` are the FP32-based INT8 artifacts (files in ``int8_dir``, e.g. not
    yet added to the package) whose Q/DQ and scales are copied.
    """
    fp16 = choose_artifacts(load_manifest(package_dir), "onnx", "fp16")
    artifacts = {}
    for role in ROLES:
        source, base = fp16.by_role[role], int8[role]
        target = staging / f"{role}.fp16.int8.onnx"
        files = trt_int8_graph(package_dir, role, base, int8_dir, target)
        scheme = (
            "QDQ int8 with fp16 scales: per-channel symmetric weights, "
            "per-tensor symmetric activations (TensorRT strongly typed)"
        )
        build = {"opset": OPSET, "scheme": scheme}
        artifacts[role] = trt_twin_artifact("int8", source, base, target, files, build)
    return artifacts


def trt_twin_artifact(
    precision: str,
    source: Artifact,
    base: Artifact,
    target: Path,
    files: list[Path],
    build: dict,
) -> Artifact:
    """The ``onnx-trt`` artifact of ``target``: the fp16 ``source`` graph carrying the
    quantization of the ONNX Runtime artifact ``base`` (``files``: graph, then data)."""
    cross = {t.name for t in (*base.inputs, *base.outputs) if t.dtype == "int8"}
    return Artifact(
        backend=BACKEND,
        precision=precision,
        file=target.name,
        sha256=file_sha256(target),
        inputs=_int8_specs(source.inputs, cross),
        outputs=_int8_specs(source.outputs, cross),
        external_data=tuple(FileRef(p.name, file_sha256(p)) for p in files[1:]),
        build={
            **base.build,
            "base_precision": "fp16",
            "source_artifacts": {f.file: f.sha256 for f in source.files()},
            "scales_from": {f.file: f.sha256 for f in base.files()},
            **build,
        },
    )
