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
from typing import Any, BinaryIO

from ...runtime.backends.cuda_runtime import open_cuda_runtime
from ...runtime.backends.engine_record import environment, make_record
from ...runtime.backends.trt_backend import profile_memory
from ...runtime.backends.trt_common import capturing_logger, dtype_name, import_tensorrt
from ...runtime.backends.trt_profiles import FrameSizes, ProfileLimits, derive_profiles
from ...runtime.errors import UserError
from ...runtime.inference.generation import largest_visual_piece
from ...runtime.model.contract import ROLES, TensorSpec
from ...runtime.package.files import file_sha256, write_atomic
from ...runtime.package.loader import ModelPackage, add_artifacts, open_package
from ...runtime.package.manifest import Artifact, Manifest

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
    level = hardware_level(trt, settings.hardware_compatibility)
    package = open_package(folder, verify=False)
    sources = {r: source_artifact(package.manifest, r, settings.precision) for r in ROLES}
    for artifact in sources.values():
        package.path(artifact)  # sha256 of the ONNX (and its weights) before building on it
    env = environment(trt, open_cuda_runtime())
    log(f"building {settings.precision} engines on {env['gpu']} with TensorRT {env['tensorrt']}")
    staging = Path(folder) / f".build-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    try:
        artifacts = {}
        for role in ROLES:
            job = BuildJob(trt, package, role, sources[role], settings, level, log)
            artifacts[role] = build_engine(job, env, staging)
        return add_artifacts(folder, artifacts, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def hardware_level(trt: Any, name: str) -> Any:
    """The ``trt.HardwareCompatibilityLevel`` member ``name``, if this TensorRT has it.

    SAME_COMPUTE_CAPABILITY is TensorRT 10.9's (JetPack 6.1/6.2 ship 10.3).
    """
    offered = list(getattr(trt.HardwareCompatibilityLevel, "__members__", {}))
    if name not in offered:
        raise UserError(
            f"--hardware-compatibility {name}: TensorRT {trt.__version__} offers "
            f"{', '.join(offered)} (SAME_COMPUTE_CAPABILITY needs TensorRT 10.9 or later)"
        )
    return getattr(trt.HardwareCompatibilityLevel, name)


@dataclass(frozen=True)
class BuildJob:
    """One engine to build: the graph, what was asked for, where progress goes."""

    trt: Any
    package: ModelPackage
    role: str
    source: Artifact
    settings: BuildSettings
    level: Any  # trt.HardwareCompatibilityLevel
    log: Log


def _limits(package: ModelPackage, settings: BuildSettings) -> ProfileLimits:
    return ProfileLimits(
        settings.max_frames or package.max_frames, settings.max_context or package.max_context
    )


def build_engine(job: BuildJob, env: dict[str, Any], staging: Path) -> Artifact:
    """Build, write and read back one engine; its artifact (file in ``staging``).

    Jetson memory is unified, so host copies count against the GPU: the plan
    is written and hashed through a ``memoryview`` (no ``bytes`` copy), and the
    builder, network and parser (which hold host copies of the weights) are
    gone before the engine is deserialised to read its facts back.
    """
    logger = capturing_logger(job.trt)
    plan, profiles = _serialize(job, logger)
    settings, name = job.settings, f"{job.role}.{job.settings.precision}.plan"
    view = memoryview(plan)
    _write_bytes(staging / name, view)
    plan_sha256 = hashlib.sha256(view).hexdigest()
    facts = _engine_facts(job.trt, logger, view, job.role, settings.version_compatible)
    record_settings = {
        "version_compatible": settings.version_compatible,
        "hardware_compatibility": settings.hardware_compatibility,
        "strongly_typed": True,
        "optimization_level": settings.optimization_level,
        "workspace_bytes": settings.workspace_mb << 20,
        "profiles": [p.to_dict() for p in profiles],
        "source": {"file": job.source.file, "sha256": job.source.sha256},
        "plan_sha256": plan_sha256,
    }
    record = make_record(env, record_settings, facts)
    dtypes = {io["name"]: io["dtype"] for io in facts["io"]}
    job.log(f"{job.role}: {name} {view.nbytes / 2**20:.1f} MiB")
    return Artifact(
        backend="tensorrt",
        precision=settings.precision,
        file=name,
        sha256=file_sha256(staging / name),
        inputs=tuple(TensorSpec(s.name, dtypes[s.name], s.dims) for s in job.source.inputs),
        outputs=tuple(TensorSpec(s.name, dtypes[s.name], s.dims) for s in job.source.outputs),
        build=record,
    )


def _serialize(job: BuildJob, logger: Any) -> tuple[Any, list]:
    """Parse and build; the plan (``IHostMemory``) and its profiles.

    The builder, network, parser and config die with this frame.
    """
    trt, role, settings = job.trt, job.role, job.settings
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = job.package.folder / job.source.file
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    profiles = _profiles(job)
    config = _config(builder, job, profiles)
    cache = _timing_cache(config, settings.timing_cache, job.log)
    job.log(f"{role}: building from {job.source.file} ({len(profiles)} profile(s)) ...")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise _build_failure(role, logger, settings, job.log)
    if cache is not None and settings.timing_cache is not None:
        _save_timing_cache(config, settings.timing_cache)
    return plan, profiles


def _profiles(job: BuildJob) -> list:
    d = job.package.dims
    frame = FrameSizes(d.tokens_per_frame, d.patches_per_frame, d.v2v_scope == "frame")
    limits = _limits(job.package, job.settings)
    piece = largest_visual_piece(
        d.num_heads, frame.pooled, frame.memory, limits.max_frames, frame.frame_scope
    )
    dims = job.package.manifest.graphs[job.role].dims
    return derive_profiles(job.source.inputs, dims, limits, frame, piece)


def _config(builder: Any, job: BuildJob, profiles: list) -> Any:
    trt, settings = job.trt, job.settings
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    config.hardware_compatibility_level = job.level
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    for shape_profile in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shape_profile.shapes.items():
            try:
                profile.set_shape(name, low, opt, high)
            except RuntimeError as exc:  # the bindings raise on inconsistent min/opt/max
                raise UserError(
                    f"{job.role}: TensorRT refused profile {shape_profile.name} of {name} "
                    f"({low} / {opt} / {high}): {exc}"
                ) from None
        config.add_optimization_profile(profile)
    monitor = progress_monitor(trt, lambda text: job.log(f"{job.role}: {text}"))
    if monitor is not None:
        config.progress_monitor = monitor
    return config


def _timing_cache(config: Any, path: Path | None, log: Log) -> Any:
    """Load (or start) the timing cache file: later builds on this GPU skip the timing.

    ``set_timing_cache`` returns False for a cache made on another GPU or
    TensorRT (IBuilderConfig::setTimingCache); then a new one is started and
    replaces the file after the build.
    """
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    log(
        f"timing cache {path} was made on another GPU or TensorRT (TensorRT refused it): "
        "starting a new one, which replaces it after the build"
    )
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        raise UserError(f"TensorRT refused a new, empty timing cache (for {path})")
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    _write_bytes(path, memoryview(cache.serialize()))


def _write_bytes(path: Path, data: memoryview) -> None:
    """Atomically write a TensorRT buffer (``IHostMemory``) without copying it to ``bytes``."""

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    write_atomic(path, write)


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
    errors = "\n".join(logger.errors)  # every error and warning, not only the last lines
    shown = "\n".join(list(logger.errors)[-12:]) if errors else logger.tail()
    log(f"TensorRT's errors and warnings ({role}):\n{shown}")
    if any(word in errors.lower() for word in OOM_WORDS):
        return UserError(
            f"building {role} ran out of GPU memory: lower --workspace-mb (now "
            f"{settings.workspace_mb}), then --max-context or --max-frames"
        )
    return UserError(f"TensorRT could not build {role} (its log is above)")


def _engine_facts(
    trt: Any, logger: Any, plan: memoryview, role: str, host_code: bool
) -> dict[str, Any]:
    """I/O names and dtypes, and device memory per profile, read back from the engine.

    A version-compatible plan embeds the lean runtime (host code): a
    ``Runtime`` deserialises it only with ``engine_host_code_allowed``.
    """
    runtime = trt.Runtime(logger)
    runtime.engine_host_code_allowed = host_code
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"TensorRT cannot load the {role} engine it just built: {logger.tail(4)}")
    io = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        io.append({"name": name, "dtype": dtype_name(engine.get_tensor_dtype(name)), "mode": mode})
    memory = [profile_memory(engine, p) for p in range(engine.num_optimization_profiles)]
    return {"io": io, "device_memory": memory}
