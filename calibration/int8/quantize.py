"""INT8 graphs in explicit Q/DQ form, calibrated on video runs.

``quantize_package`` selects weight MatMuls by module path (``recipes``),
gathers the range of every activation they read while the FP32 runtime
answers questions on the calibration videos (``calibrate``), runs
``onnxruntime.quantization.quantize_static`` per graph on those ranges
(QDQ, per-channel symmetric INT8 weights, symmetric per-tensor INT8
activations; the ranges reach it as its JSON calibration cache, so it runs
no calibrator of its own), optionally stores the cross K/V in INT8
(``kv_int8``), and adds the graphs to the package as the ``onnx/int8``
artifact set with a manifest record of how they were made.

ONNX Runtime 1.32 facts this follows: the histogram calibrators (Entropy,
Percentile, Distribution) crash on inputs whose shapes vary between samples
and Percentile on empty tensors, both normal here (chunks of any length, an
empty past); its own min/max calibrator needs every feed stored and replayed
(over 40 GB of temporary files for a 0.5B-shaped model at 64 frames), where
the streamed min/max is the same range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ...runtime.errors import UserError
from ...runtime.model.contract import LLM, POOLING, ROLES, TensorSpec
from ...runtime.package.files import file_sha256
from ...runtime.package.loader import choose_artifacts
from ...runtime.package.manifest import Artifact, FileRef, Manifest, load_manifest
from ..recipes import WeightNode, select, weight_nodes
from . import kv_int8

if TYPE_CHECKING:
    from ..collect.calibrate import Calibration


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize: recipe, excluded module globs, INT8 cross K/V, extra groups off."""

    recipe: str = "default"
    exclude: tuple[str, ...] = ()
    int8_cross_kv: bool = True
    skip_groups: tuple[str, ...] = ()  # layer groups kept in float (the --max-drift search)
    search: dict | None = field(default=None, compare=False)  # the search's record, if any


def quantize_graph(
    source: Path, target: Path, nodes: list[str], calibration: Calibration, role: str
) -> None:
    """Write ``source`` with ``nodes`` in INT8 Q/DQ form to ``target`` (any graph size)."""
    external = (source.with_name(source.name + ".data")).exists()
    if not nodes:  # ORT reads an empty selection as "everything": copy the graph instead
        # Named as the artifact lists it: without a location onnx picks a random name,
        # which the package never listed (a 2B-shaped vision encoder lost its weights).
        data = target.with_name(target.name + ".data")
        onnx.save(
            onnx.load(str(source)), str(target), save_as_external_data=external, location=data.name
        )
        return
    table = calibration.stats.by_role.get(role, {})
    inputs = _matmul_inputs(source, nodes)
    missing = [name for name in inputs if name not in table]
    if missing:
        raise UserError(f"no calibration statistics were gathered for graph {role} ({missing[0]})")
    cache = target.with_name(target.name + ".ranges.json")
    _write_ranges(cache, {name: table[name].symmetric_range() for name in inputs})
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # ORT logs advice on pre-processing at WARNING
    try:
        _quantize_static(source, target, nodes, cache, external)
    finally:
        root.setLevel(level)
        cache.unlink(missing_ok=True)


def _matmul_inputs(source: Path, nodes: list[str]) -> list[str]:
    wanted = set(nodes)
    model = onnx.load(str(source), load_external_data=False)
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.name in wanted))


def _write_ranges(path: Path, ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """ONNX Runtime's calibration cache (``save_tensors_data``) holding ``ranges``."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), path)


def _quantize_static(
    source: Path, target: Path, nodes: list[str], cache: Path, external: bool
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source),
        str(target),
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=external,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            # Q/DQ on a MatMul's inputs only (where TensorRT's guide puts them): a float
            # output keeps q, k and v apart after the fused projection (one per-tensor
            # scale across them cost ~1 dB) and ONNX Runtime runs MatMulIntegerToFloat.
            "OpTypesToExcludeOutputQuantization": ["MatMul"],
        },
        calibration_cache_path=str(cache),
    )


def selected_nodes(
    package_dir: Path, manifest: Manifest, options: QuantizeOptions
) -> dict[str, list[WeightNode]]:
    """The weight MatMuls each graph quantizes (from the FP32 graphs' metadata)."""
    fp32 = choose_artifacts(manifest, "onnx", "fp32")
    nodes = []
    for role in ROLES:
        model = onnx.load(str(package_dir / fp32.by_role[role].file), load_external_data=False)
        nodes += weight_nodes(model, role)
    chosen, _ = select(nodes, options.recipe, list(options.exclude))
    chosen = [n for n in chosen if n.group not in options.skip_groups]
    return {role: [n for n in chosen if n.role == role] for role in ROLES}


def _int8_specs(specs: tuple[TensorSpec, ...], cross: set[str]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, "int8", t.dims) if t.name in cross else t for t in specs)


def _apply_cross_kv(role: str, path: Path, scales: dict[str, np.ndarray]) -> None:
    """Pooling emits, and the LLM reads, int8 cross K/V with per-head scales."""
    if role not in (POOLING, LLM) or not scales:
        return
    external = path.with_name(path.name + ".data").exists()
    model = onnx.load(str(path))
    if role == POOLING:
        kv_int8.quantize_outputs(model, scales, np.dtype(np.float32))
    else:
        kv_int8.dequantize_inputs(model, scales, np.dtype(np.float32))
    if external:
        path.with_name(path.name + ".data").unlink()
    onnx.save(
        model,
        str(path),
        save_as_external_data=external,
        location=path.name + ".data",
    )


def int8_artifacts(
    package_dir: Path,
    staging: Path,
    calibration: Calibration,
    options: QuantizeOptions,
    progress: Callable[[], None] = lambda: None,
) -> dict[str, Artifact]:
    """Quantize the three FP32 graphs into ``staging``; their manifest records."""
    artifacts = {}
    for role in ROLES:
        artifacts[role] = int8_artifact(package_dir, staging, calibration, options, role)
        progress()
    return artifacts


def int8_artifact(
    package_dir: Path,
    staging: Path,
    calibration: Calibration,
    options: QuantizeOptions,
    role: str,
    precision: str = "int8",
) -> Artifact:
    """``role``'s FP32 graph with its recipe's MatMuls in INT8 Q/DQ, as a ``precision``
    artifact in ``staging`` (``int4`` sets take the vision and pooling graphs from here)."""
    manifest = load_manifest(package_dir)
    source = choose_artifacts(manifest, "onnx", "fp32").by_role[role]
    chosen = selected_nodes(package_dir, manifest, options)[role]
    scales = kv_int8.head_scales(calibration.cross_max) if options.int8_cross_kv else {}
    target = staging / f"{role}.{precision}.onnx"
    quantize_graph(package_dir / source.file, target, [n.name for n in chosen], calibration, role)
    _apply_cross_kv(role, target, scales)
    files = [target] + [p for p in [target.with_name(target.name + ".data")] if p.exists()]
    build = {
        **build_record(options, calibration, role, source),
        "quantized_modules": sorted({n.module for n in chosen}),
        "scheme": "QDQ int8: per-channel symmetric weights, per-tensor symmetric activations",
        **cross_kv_record(scales),
    }
    return Artifact(
        backend="onnx",
        precision=precision,
        file=target.name,
        sha256=file_sha256(target),
        inputs=_int8_specs(source.inputs, set(scales) if role == LLM else set()),
        outputs=_int8_specs(source.outputs, set(scales) if role == POOLING else set()),
        external_data=tuple(FileRef(f.name, file_sha256(f)) for f in files[1:]),
        build=build,
    )


def build_record(
    options: QuantizeOptions, calibration: Calibration, role: str, source: Artifact
) -> dict:
    """The manifest's record of a quantized graph: recipe, calibration, source."""
    return {
        "recipe": options.recipe,
        "exclude": list(options.exclude),
        "kept_float_groups": list(options.skip_groups),
        "search": options.search,
        "calibration_sha256": calibration.sha256,
        "calibration_videos": len(calibration.videos),
        "calibration_runs": calibration.stats.runs.get(role, 0),
        "calibration_frames": calibration.frames,
        "source_artifacts": {f.file: f.sha256 for f in source.files()},
        "base_precision": "fp32",
    }


def cross_kv_record(scales: dict[str, np.ndarray]) -> dict:
    """How the cross K/V memory is stored, with its per-head scales."""
    return {
        "cross_kv": "int8 per-head" if scales else "float",
        "cross_kv_scales": {k: v.tolist() for k, v in scales.items()} if scales else {},
    }
