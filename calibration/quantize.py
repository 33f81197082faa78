"""INT8 graphs in explicit Q/DQ form, calibrated on recorded video runs.

``quantize_package`` selects weight MatMuls by module path (``recipes``),
records the FP32 runtime's feeds on the calibration videos (``record``),
runs ``onnxruntime.quantization.quantize_static`` per graph (QDQ, per-channel
symmetric INT8 weights, symmetric per-tensor INT8 activations, min/max
ranges streamed with ``CalibStridedMinMax``), optionally stores the cross
K/V in INT8 (``kv_int8``), and adds the graphs to the package as the
``onnx/int8`` artifact set with a manifest record of how they were made.

ONNX Runtime 1.32 facts this follows: the histogram calibrators (Entropy,
Percentile, Distribution) crash on inputs whose shapes vary between samples
and Percentile on empty tensors, both normal here (chunks of any length, an
empty past); ``CalibMaxIntermediateOutputs`` discards collected data; min/max
over strides gives the same ranges as over everything at once, with memory
bounded by one stride.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..runtime.errors import UserError
from ..runtime.model.contract import LLM, POOLING, ROLES, TensorSpec
from ..runtime.package.files import file_sha256
from ..runtime.package.loader import choose_artifacts
from ..runtime.package.manifest import Artifact, FileRef, Manifest, load_manifest
from . import kv_int8
from .calib_data import (
    CalibVideo,
    expand_paths,
    select_videos,
    selection_hash,
    synthetic_videos,
)
from .progress import progress_bar
from .recipes import WeightNode, select, weight_nodes
from .record import CrossRange, FeedStore, record_calibration

STRIDE = 16  # samples per calibration stride: bounds the calibrator's memory
Log = Callable[[str], None]


@dataclass
class Calibration:
    """Recorded feeds of every graph and what they were recorded on."""

    store: FeedStore
    videos: list[CalibVideo]
    seed: int
    cross_max: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return selection_hash(self.videos, self.seed)


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize: recipe, excluded module globs, INT8 cross K/V, extra groups off."""

    recipe: str = "default"
    exclude: tuple[str, ...] = ()
    int8_cross_kv: bool = True
    skip_groups: tuple[str, ...] = ()  # layer groups kept in float (the --max-drift search)
    search: dict | None = field(default=None, compare=False)  # the search's record, if any


def _stride(total: int) -> int:
    """The largest stride ≤ STRIDE dividing ``total`` (ORT requires an exact division)."""
    return next(s for s in range(min(STRIDE, total), 0, -1) if total % s == 0)


def calibrate(
    package_dir: Path,
    workdir: Path,
    calib: list[str] | None,
    count: int,
    seed: int,
    log: Log,
) -> Calibration:
    """Choose the videos (the user's, or synthetic ones) and record every graph's feeds."""
    manifest = load_manifest(package_dir)
    frames = int(manifest.model_config.get("num_frames", 8))
    if calib is not None:
        videos = select_videos(expand_paths(calib), count, seed)
    else:
        (workdir / "videos").mkdir()
        videos = synthetic_videos(workdir / "videos", count, frames)
    store, cross = FeedStore(workdir / "feeds"), CrossRange()
    with progress_bar(len(videos), "calibration runs", "video") as bar:
        used = record_calibration(package_dir, videos, store, cross, bar.update, log)
    return Calibration(store, used, seed, cross.max_abs)


def quantize_graph(
    source: Path, target: Path, nodes: list[str], calibration: Calibration, role: str
) -> None:
    """Write ``source`` with ``nodes`` in INT8 Q/DQ form to ``target`` (any graph size)."""
    external = (source.with_name(source.name + ".data")).exists()
    if not nodes:  # ORT reads an empty selection as "everything": copy the graph instead
        onnx.save(onnx.load(str(source)), str(target), save_as_external_data=external)
        return
    reader = calibration.store.reader(role)
    if not len(reader):
        raise UserError(f"no calibration samples were recorded for graph {role}")
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # ORT logs advice on pre-processing at WARNING
    try:
        _quantize_static(source, target, nodes, reader, external)
    finally:
        root.setLevel(level)


def _quantize_static(source: Path, target: Path, nodes: list[str], reader, external: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source),
        str(target),
        reader,
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
            "CalibStridedMinMax": _stride(len(reader)),
        },
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
    manifest = load_manifest(package_dir)
    fp32 = choose_artifacts(manifest, "onnx", "fp32")
    chosen = selected_nodes(package_dir, manifest, options)
    scales = kv_int8.head_scales(calibration.cross_max) if options.int8_cross_kv else {}
    artifacts = {}
    for role in ROLES:
        source = fp32.by_role[role]
        target = staging / f"{role}.int8.onnx"
        quantize_graph(
            package_dir / source.file, target, [n.name for n in chosen[role]], calibration, role
        )
        _apply_cross_kv(role, target, scales)
        files = [target] + [p for p in [target.with_name(target.name + ".data")] if p.exists()]
        build = {
            "recipe": options.recipe,
            "exclude": list(options.exclude),
            "kept_float_groups": list(options.skip_groups),
            "search": options.search,
            "quantized_modules": sorted({n.module for n in chosen[role]}),
            "calibration_sha256": calibration.sha256,
            "calibration_videos": len(calibration.videos),
            "calibration_samples": len(calibration.store.reader(role)),
            "source_artifacts": {f.file: f.sha256 for f in source.files()},
            "base_precision": "fp32",
            "scheme": "QDQ int8: per-channel symmetric weights, per-tensor symmetric activations",
            "cross_kv": "int8 per-head" if scales else "float",
            "cross_kv_scales": {k: v.tolist() for k, v in scales.items()} if scales else {},
        }
        cross = set(scales)
        artifacts[role] = Artifact(
            backend="onnx",
            precision="int8",
            file=target.name,
            sha256=file_sha256(target),
            inputs=_int8_specs(source.inputs, cross if role == LLM else set()),
            outputs=_int8_specs(source.outputs, cross if role == POOLING else set()),
            external_data=tuple(FileRef(f.name, file_sha256(f)) for f in files[1:]),
            build=build,
        )
        progress()
    return artifacts
