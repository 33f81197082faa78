"""``build``: TensorRT engines from a package's ONNX graphs, on the device (torch-free).

Each graph is parsed into a strongly typed network (the ONNX artifact's
dtypes decide every layer's precision: fp16 engines from the fp16 graphs,
INT8 engines from the fp16 graphs with Q/DQ), given the profiles of
``runtime.trt_profiles``, built, read back, and added to the package as a
``tensorrt`` artifact with its engine record, atomically (``add_artifacts``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.backends.cuda_runtime import open_cuda_runtime
from ..runtime.backends.engine_record import environment, make_record
from ..runtime.backends.trt_backend import profile_memory
from ..runtime.backends.trt_common import capturing_logger, dtype_name, import_tensorrt
from ..runtime.backends.trt_profiles import FrameSizes, ProfileLimits, derive_profiles
from ..runtime.errors import UserError
from ..runtime.inference.generation import largest_visual_piece
from ..runtime.model.contract import ROLES, TensorSpec
from ..runtime.package.files import file_sha256, write_atomic
from ..runtime.package.loader import ModelPackage, add_artifacts, open_package
from ..runtime.package.manifest import Artifact, Manifest

OOM_WORDS = ("out of memory", "outofmemory", "cudaerrormemoryallocation", "insufficient memory")
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildSettings:
    """What ``build`` was asked for."""

    precision: str = "fp16"
    max_frames: int | None = None
    max_context: int | None = None
    timing_cache: Path | None = None
    workspace_mb: int = 1024
    optimization_level: int = 3
    version_compatible: bool = False
    hardware_compatibility: str = "NONE"


def source_artifact(manifest: Manifest, role: str, precision: str) -> Artifact:
    """The ONNX artifact an engine of ``precision`` is built from (onnx/fp16, onnx-trt/int8,
    onnx-trt/int4)."""
    graph = manifest.graphs[role]
    if precision == "fp16":
        found = graph.find("onnx", "fp16")
        hint = "export it with `crosslmm-edge export CKPT --add --dtype fp16 --out PKG`"
    elif precision in ("int8", "int4"):
        # onnx-trt/*: the fp16 graphs with Q/DQ (onnx/int8 and onnx/int4 are fp32-based,
        # for ONNX Runtime).
        found = graph.find("onnx-trt", precision)
        flag = "" if precision == "int8" else " --precision int4"
        hint = (
            f"run `crosslmm-edge quantize PKG --in-place{flag}` on a package with fp16 graphs "
            f"(it writes the onnx-trt/{precision} set)"
        )
    else:
        raise UserError(
            f"--precision {precision}: TensorRT engines are built as fp16, int8 or int4"
        )
    if found is None:
        raise UserError(f"{role}: the package has no {precision} ONNX graph to build from; {hint}")
    return found


def build_package(folder: str | Path, settings: BuildSettings, log: Log = print) -> Manifest:
    """Build an engine per role and add them to the package; the new manifest."""
    trt = import_tensorrt("`build`")
    package = open_package(folder, verify=False)
    sources = {r: source_artifact(package.manifest, r, settings.precision) for r in ROLES}
    for artifact in sources.values():
        package.path(artifact)  # sha256 of the ONNX (and its weights) before building on it
    env = environment(trt, open_cuda_runtime())
    log(f"building {settings.precision} engines on {env['gpu']} with TensorRT {env['tensorrt']}")
    staging = Path(folder) / f".build-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    try:
        artifacts = {
            role: build_engine(trt, package, role, sources[role], settings, env, staging, log)
            for role in ROLES
        }
        return add_artifacts(folder, artifacts, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _limits(package: ModelPackage, settings: BuildSettings) -> ProfileLimits:
    return ProfileLimits(
        settings.max_frames or package.max_frames, settings.max_context or package.max_context
    )


def build_engine(
    trt: Any,
    package: ModelPackage,
    role: str,
    source: Artifact,
    settings: BuildSettings,
    env: dict[str, Any],
    staging: Path,
    log: Log,
) -> Artifact:
    """Parse, configure, build and read back one engine; its artifact (file in ``staging``)."""
    logger = capturing_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = package.folder / source.file
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    dims = package.manifest.graphs[role].dims
    d = package.dims
    frame = FrameSizes(d.tokens_per_frame, d.patches_per_frame, d.v2v_scope == "frame")
    limits = _limits(package, settings)
    piece = largest_visual_piece(
        d.num_heads, frame.pooled, frame.memory, limits.max_frames, frame.frame_scope
    )
    profiles = derive_profiles(source.inputs, dims, limits, frame, piece)
    config = _config(trt, builder, settings, profiles, log, role)
    cache = _timing_cache(config, settings.timing_cache)
    log(f"{role}: building from {source.file} ({len(profiles)} profile(s)) ...")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise _build_failure(role, logger, settings, log)
    if cache is not None and settings.timing_cache is not None:
        data = bytes(config.get_timing_cache().serialize())
        write_atomic(settings.timing_cache, lambda handle: handle.write(data))
    name = f"{role}.{settings.precision}.plan"
    data = bytes(plan)
    write_atomic(staging / name, lambda handle: handle.write(data))
    facts = _engine_facts(trt, logger, data, role)
    record_settings = {
        "version_compatible": settings.version_compatible,
        "hardware_compatibility": settings.hardware_compatibility,
        "strongly_typed": True,
        "optimization_level": settings.optimization_level,
        "workspace_bytes": settings.workspace_mb << 20,
        "profiles": [p.to_dict() for p in profiles],
        "source": {"file": source.file, "sha256": source.sha256},
        "plan_sha256": hashlib.sha256(data).hexdigest(),
    }
    record = make_record(env, record_settings, facts)
    dtypes = {io["name"]: io["dtype"] for io in facts["io"]}
    log(f"{role}: {name} {len(data) / 2**20:.1f} MiB")
    return Artifact(
        backend="tensorrt",
        precision=settings.precision,
        file=name,
        sha256=file_sha256(staging / name),
        inputs=tuple(TensorSpec(s.name, dtypes[s.name], s.dims) for s in source.inputs),
        outputs=tuple(TensorSpec(s.name, dtypes[s.name], s.dims) for s in source.outputs),
        build=record,
    )


def _config(
    trt: Any, builder: Any, settings: BuildSettings, profiles: list, log: Log, role: str
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    config.hardware_compatibility_level = getattr(
        trt.HardwareCompatibilityLevel, settings.hardware_compatibility
    )
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    for shape_profile in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shape_profile.shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    monitor = progress_monitor(trt, lambda text: log(f"{role}: {text}"))
    if monitor is not None:
        config.progress_monitor = monitor
    return config


def _timing_cache(config: Any, path: Path | None) -> Any:
    """Load (or start) the timing cache file: later builds on this GPU skip the timing."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def progress_monitor(trt: Any, log: Log) -> Any:
    """A ``trt.IProgressMonitor`` printing top-level build phases (None before TensorRT 10)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                log(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _build_failure(role: str, logger: Any, settings: BuildSettings, log: Log) -> UserError:
    tail = logger.tail()
    log(f"TensorRT log ({role}):\n{tail}")
    if any(word in tail.lower() for word in OOM_WORDS):
        return UserError(
            f"building {role} ran out of GPU memory: lower --workspace-mb (now "
            f"{settings.workspace_mb}), then --max-context or --max-frames"
        )
    return UserError(f"TensorRT could not build {role} (its log is above)")


def _engine_facts(trt: Any, logger: Any, plan: bytes, role: str) -> dict[str, Any]:
    """I/O names and dtypes, and device memory per profile, read back from the engine."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"TensorRT cannot load the {role} engine it just built: {logger.tail(4)}")
    io = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        io.append({"name": name, "dtype": dtype_name(engine.get_tensor_dtype(name)), "mode": mode})
    memory = [profile_memory(engine, p) for p in range(engine.num_optimization_profiles)]
    return {"io": io, "device_memory": memory}
