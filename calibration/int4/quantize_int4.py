"""INT4 weight-only LLM: the ``onnx/int4`` artifact set.

The LLM's recipe MatMuls (decoder layers and DCALs) get 4-bit block weights
(``block_quant``: a blocked ``DequantizeLinear`` before each MatMul, opset 21),
activations stay float. Per layer group a plan may keep a group wider (INT8
blocks or float: ``--max-drift``), and the LM head may be stored in INT8 or
INT4 blocks too. With ``algorithm="awq"`` each weight is first scaled per
input channel by activation-aware factors (``awq``) whose inverse is folded
into the operation that produces the activation, so the graph stays the same
shape. The vision encoder and pooling graphs are the INT8 recipe's (Q/DQ, and
the INT8 cross K/V memory), written again under the ``int4`` precision so the
set is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from ...export.graphs.ort_attention import AttentionHeads, shared_kv_specs
from ...export.graphs.ort_fusions import fuse_for_onnx_runtime, rope_tables
from ...export.graphs.ort_grouped_decode import GROUPED_FROM_PAST, spare_rows
from ...runtime.errors import UserError
from ...runtime.model.contract import LLM, ROLES
from ...runtime.package.files import file_sha256
from ...runtime.package.loader import choose_artifacts
from ...runtime.package.manifest import Artifact, FileRef, Manifest, load_manifest
from ..int8 import kv_int8
from ..int8.quantize import (
    QuantizeOptions,
    build_record,
    cross_kv_record,
    int8_artifact,
    selected_nodes,
)
from ..recipes import WeightNode, module_path
from .block_quant import OPSET, BlockScheme, BlockWeight, dequantize_node, quantize_weight
from .options import Int4Options

if TYPE_CHECKING:
    from ..collect.calibrate import Calibration

HEAD_MODULE = "model"  # the LM head's module path (recipes: never a recipe MatMul)
EMBEDDING_MODULE = "embed_tokens"  # the token embedding's module path ends so


def llm_plan(
    package_dir: Path, manifest: Manifest, options: QuantizeOptions, int4: Int4Options
) -> dict[str, tuple[WeightNode, BlockScheme]]:
    """LLM MatMul name -> (its node, how its weight is stored); absent names stay float."""
    chosen = selected_nodes(package_dir, manifest, options)[LLM]
    wider = dict(int4.wider)
    plan = {}
    for node in chosen:
        storage = wider.get(node.group, "int4")
        if storage != "float":
            plan[node.name] = (node, int4.scheme(8 if storage == "int8" else 4))
    if int4.head != "float":
        fp32 = choose_artifacts(manifest, "onnx", "fp32").by_role[LLM]
        model = onnx.load(str(package_dir / fp32.file), load_external_data=False)
        head = head_matmul(model)
        if head is None:
            raise UserError(f"--head {int4.head}: the LLM graph has no LM head MatMul")
        node = WeightNode(LLM, head.name, HEAD_MODULE)
        plan[head.name] = (node, int4.head_scheme())
    return plan


def head_matmul(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The LM head: the last MatMul of module ``model`` reading a stored weight, or, tied
    to the embedding, ``Transpose`` of it."""
    inits = {t.name for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in reversed(model.graph.node):
        if node.op_type != "MatMul" or module_path(node) != HEAD_MODULE:
            continue
        source = producer.get(node.input[1])
        tied = source is not None and source.op_type == "Transpose" and source.input[0] in inits
        if node.input[1] in inits or tied:
            return node
    return None


def gptq_calibration(
    package_dir: Path, int4: Int4Options | None
) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """What calibration keeps for ``--algorithm gptq``: the roles whose activations keep a
    Gram matrix, and activations to track beyond the recipe's (a 4-bit LM head's input)."""
    if int4 is None or int4.algorithm != "gptq":
        return (), {}
    if int4.head != "int4":
        return (LLM,), {}
    fp32 = choose_artifacts(load_manifest(package_dir), "onnx", "fp32").by_role[LLM]
    head = head_matmul(onnx.load(str(package_dir / fp32.file), load_external_data=False))
    return (LLM,), ({LLM: [head.input[0]]} if head is not None else {})


def untie_head(model: onnx.ModelProto, head: onnx.NodeProto) -> None:
    """Give a tied head its own transposed weight (in place), so it can be quantized
    apart from the embedding; the Transpose goes when nothing else reads it."""
    inits = {t.name: t for t in model.graph.initializer}
    if head.input[1] in inits:
        return
    transpose = next(n for n in model.graph.node if head.input[1] in n.output)
    table = numpy_helper.to_array(inits[transpose.input[0]])
    name = f"{transpose.input[0]}_lm_head"
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
    head.input[1] = name
    if not any(transpose.output[0] in n.input for n in model.graph.node):
        model.graph.node.remove(transpose)


Quantize = Callable[[onnx.NodeProto, np.ndarray, BlockScheme], BlockWeight]


def rounded(node: onnx.NodeProto, weight: np.ndarray, scheme: BlockScheme) -> BlockWeight:
    """``Quantize`` by round to nearest (``quantize_weight``)."""
    return quantize_weight(weight, scheme)


def block_quantize_model(
    model: onnx.ModelProto,
    plan: dict[str, BlockScheme],
    scale_dtype: np.dtype,
    weights: Callable[[onnx.NodeProto, np.ndarray], np.ndarray] | None = None,
    quantize: Quantize = rounded,
) -> None:
    """Replace the weight of every MatMul in ``plan`` by blocked DQ (in place, opset 21).

    ``weights(node, W)`` may transform a weight before it is quantized (AWQ's
    scaling, whose inverse the caller has folded upstream); ``quantize(node, W,
    scheme)`` turns it into blocks (round to nearest unless told otherwise).
    """
    inits = {t.name: t for t in model.graph.initializer}
    nodes, new_inits = [], []
    for node in model.graph.node:
        scheme = plan.get(node.name) if node.op_type == "MatMul" else None
        if scheme is not None:
            weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            if weight.ndim != 2:
                raise UserError(f"MatMul {node.name}: weight of rank {weight.ndim}, expected 2")
            if weights is not None:
                weight = weights(node, weight)
            block = quantize(node, weight, scheme)
            tensors, dq, output = dequantize_node(node.name, block, scheme, scale_dtype)
            new_inits += tensors
            nodes.append(dq)
            node.input[1] = output
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, *new_inits])
    raise_opset(model, OPSET)


def raise_opset(model: onnx.ModelProto, version: int) -> None:
    """Rewrite the default-domain opset import to ``version``.

    Every op the exporter writes that changed between opsets 18 and 21 (Cast,
    Reshape, Shape, Pad, Squeeze, Transpose, Constant, ...) only gained types
    or attributes whose default is the old behaviour; ``onnx.version_converter``
    is avoided as in ``quantize_fp16`` (it drops node metadata, loads weights).
    """
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, version)
    model.ir_version = max(model.ir_version, 10)  # int4 tensors need IR 10


def save_graph(model: onnx.ModelProto, target: Path, external: bool) -> list[Path]:
    """Write ``target`` (weights beside it when asked or when over protobuf's 2 GB)."""
    external = external or model.ByteSize() > 2**31 - 2**26
    data = target.with_name(target.name + ".data")
    onnx.save(model, str(target), save_as_external_data=external, location=data.name)
    return [target, *([data] if external else [])]


def _quantize_weights(
    model: onnx.ModelProto,
    schemes: dict[str, BlockScheme],
    int4: Int4Options,
    calibration: Calibration,
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Store every planned weight in blocks, in place: AWQ-scaled or plain, rounded to
    nearest or, 4-bit blocks, by HQQ's solver or GPTQ. The AWQ factors and the record."""
    factors: dict[str, np.ndarray] = {}
    transform, record = None, dict[str, object]()
    stats = calibration.stats.by_role.get(LLM, {})
    if int4.algorithm == "awq":
        from .awq import awq_weights

        factors, transform, record = awq_weights(model, schemes, stats)
    quantize: Quantize = rounded
    if int4.algorithm == "hqq":
        from .hqq import hqq_weight

        def quantize(node: onnx.NodeProto, weight: np.ndarray, scheme: BlockScheme):
            return (
                hqq_weight(weight, scheme) if scheme.bits == 4 else quantize_weight(weight, scheme)
            )

    gptq = None
    if int4.algorithm == "gptq":
        from .gptq import GptqQuantizer

        quantize = gptq = GptqQuantizer(stats)
    block_quantize_model(model, schemes, np.dtype(np.float32), transform, quantize)
    return factors, record if gptq is None else gptq.record()


@dataclass
class Int4Set:
    """The ``onnx/int4`` artifacts and the AWQ factors per LLM MatMul (for ``onnx-trt``)."""

    artifacts: dict[str, Artifact]
    factors: dict[str, np.ndarray]


def int4_llm(
    package_dir: Path,
    manifest: Manifest,
    target: Path,
    calibration: Calibration,
    options: QuantizeOptions,
    int4: Int4Options,
) -> tuple[list[Path], dict, dict[str, np.ndarray]]:
    """Write the INT4 LLM graph to ``target``; its files, build record and AWQ factors."""
    source = choose_artifacts(manifest, "onnx", "fp32").by_role[LLM]
    plan = llm_plan(package_dir, manifest, options, int4)
    model = onnx.load(str(package_dir / source.file))
    schemes = {name: scheme for name, (_, scheme) in plan.items()}
    head = head_matmul(model)
    if head is not None and head.name in schemes:
        untie_head(model, head)
    factors, algorithm_record = _quantize_weights(model, schemes, int4, calibration)
    named = {"hqq": "HQQ ", "gptq": "GPTQ "}.get(int4.algorithm, "")
    if int4.embedding != "float":
        from .embedding_quant import quantize_embedding

        quantize_embedding(model, int4.scheme(8 if int4.embedding == "int8" else 4))
    # The memory stays int8 (pooling's output, video states); the runtime dequantizes it
    # once per video (the artifact's ``dequantize_on_bind``), not every step in the graph.
    scales = kv_int8.head_scales(calibration.cross_max) if options.int8_cross_kv else {}
    heads = AttentionHeads.from_manifest(manifest) if int4.attention == "gqa" else None
    kv_cache, from_past = int4.cache_type, GROUPED_FROM_PAST[int4.cache_type]
    fusions = fuse_for_onnx_runtime(model, rope_tables(manifest), heads, from_past, kv_cache)
    if heads is not None and fusions["group_query_attention"] != heads.num_layers:
        raise UserError(
            f"{source.file}: the decoder attention does not have the exported pattern; "
            "quantize with --attention standard"
        )
    files = save_graph(model, target, bool(source.external_data))
    storage: dict[str, list[str]] = {}
    for node, scheme in plan.values():
        storage.setdefault(f"int{scheme.bits}", []).append(node.module)
    record = {
        **build_record(options, calibration, LLM, source),
        "scheme": f"weight-only {named}{int4.scheme(4).describe()}; activations float",
        "algorithm": int4.algorithm,
        "block_size": int4.block_size,
        "symmetric": int4.scheme(4).symmetric,
        "opset": OPSET,
        "lm_head": int4.head,
        "lm_head_block_size": int4.head_block_size if int4.head != "float" else None,
        "embedding": int4.embedding,
        "modules_by_storage": {k: sorted(set(v)) for k, v in storage.items()},
        "quantized_modules": sorted({node.module for node, _ in plan.values()}),
        "wider_groups": dict(int4.wider),
        "int4_search": int4.search,
        **algorithm_record,
        **cross_kv_record(scales),
        "ort_fusions": fusions,
        "attention": int4.attention,
        "kv_cache": kv_cache,
        "grouped_decode_from_past": from_past if fusions.get("grouped_decode") else None,
    }
    return files, record, factors


def _spare_rows(manifest: Manifest, record: dict) -> int:
    """Cache rows past the capacity that the graph's grouped decode steps write (0: none)."""
    if not record["ort_fusions"].get("grouped_decode"):
        return 0
    return spare_rows(AttentionHeads.from_manifest(manifest))


def int4_artifacts(
    package_dir: Path,
    staging: Path,
    calibration: Calibration,
    options: QuantizeOptions,
    int4: Int4Options,
    progress: Callable[[], None] = lambda: None,
) -> Int4Set:
    """The ``onnx/int4`` set in ``staging``: INT8-recipe vision and pooling, INT4 LLM."""
    int4.check()
    artifacts = {}
    for role in ROLES:
        if role != LLM:
            artifacts[role] = int8_artifact(
                package_dir, staging, calibration, options, role, "int4"
            )
            progress()
    manifest = load_manifest(package_dir)
    source = choose_artifacts(manifest, "onnx", "fp32").by_role[LLM]
    target = staging / f"{LLM}.int4.onnx"
    files, record, factors = int4_llm(package_dir, manifest, target, calibration, options, int4)
    inputs, outputs = source.inputs, source.outputs
    if record["attention"] == "gqa":  # the graph now owns a shared head-major cache
        inputs, outputs = shared_kv_specs(manifest, record["kv_cache"])
    artifacts[LLM] = Artifact(
        backend="onnx",
        precision="int4",
        file=target.name,
        sha256=file_sha256(target),
        inputs=inputs,
        outputs=outputs,
        external_data=tuple(FileRef(f.name, file_sha256(f)) for f in files[1:]),
        build=record,
        dequantize_on_bind={k: tuple(v) for k, v in record["cross_kv_scales"].items()},
        kv_spare_rows=_spare_rows(manifest, record),
    )
    progress()
    return Int4Set(artifacts, factors)
