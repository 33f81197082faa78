"""Native TensorRT engines behind the runtime's ``Backend`` interface (``--backend tensorrt``).

Pure Python over TensorRT's Python API and the CUDA runtime (cuda-python or
libcudart): nothing to compile, no torch, no pycuda. Each plan is checked
against its engine record (TensorRT version, GPU, sha256) before TensorRT
sees it. A graph gets one execution context per optimisation profile, all
sharing one device-memory block sized for the largest; a chunk runs on the
first profile that holds its shapes, and a shape outside every profile is
refused before anything runs. KV caches and cross K/V live on the device;
a decode step copies in the token and position, and copies back the logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..model.contract import DimSpec, TensorSpec
from ..package.manifest import Artifact, load_manifest
from .base import Backend, DeviceArray, GraphSession
from .cuda_runtime import (
    DEVICE_TO_DEVICE,
    DEVICE_TO_HOST,
    HOST_TO_DEVICE,
    CudaRuntime,
    open_cuda_runtime,
)
from .engine_record import environment, require_compatible
from .trt_buffers import (
    DeviceBuffer,
    ScratchPool,
    TrtDeviceArray,
    bind_sizes,
    device_copy,
    device_zeros,
    is_aligned,
)
from .trt_common import capturing_logger, dtype_name, import_tensorrt
from .trt_profiles import ShapeProfile, select_profile


class TrtBackend(Backend):
    """Loads engine plans and owns their device memory and stream."""

    name = "tensorrt"
    provider = "tensorrt"
    device = "cuda"

    def __init__(self, cuda: CudaRuntime | None = None) -> None:
        self.trt = import_tensorrt("--backend tensorrt")
        self.cuda = cuda or open_cuda_runtime()
        self.logger = capturing_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        self.env = environment(self.trt, self.cuda)

    def load(
        self,
        path: Path,
        name: str,
        inputs: Sequence[TensorSpec] = (),
        dims: Mapping[str, DimSpec] | None = None,
        sha256: Sequence[str] = (),  # engines are loaded as built: nothing derived to cache
    ) -> TrtSession:
        artifact = engine_artifact(path)
        data = path.read_bytes()
        what = f"engine {path.name} ({name})"
        require_compatible(artifact.build, self.env, _sha256_bytes(data), what)
        if artifact.build.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the lean runtime inside the plan
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            log = self.logger.tail(4).replace("\n", " | ")
            raise UserError(f"TensorRT could not deserialise {path}: {log}")
        names = [p["name"] for p in artifact.build.get("profiles", [])]
        return TrtSession(self, engine, name, artifact, dims or {}, names)

    def zeros(self, shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
        return device_zeros(self.cuda, shape, dtype)

    def upload(self, array: np.ndarray) -> DeviceArray:
        return device_copy(self.cuda, array)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def profile_memory(engine: Any, index: int) -> int:
    """Device memory a context needs for profile ``index`` (the v2 call is TensorRT >= 10.1)."""
    getter = getattr(engine, "get_device_memory_size_for_profile_v2", None)
    if getter is None:
        getter = engine.get_device_memory_size_for_profile
    return int(getter(index))


def engine_artifact(path: Path) -> Artifact:
    """The manifest's TensorRT artifact for the plan file ``path`` (its record is there)."""
    manifest = load_manifest(path.parent)
    for graph in manifest.graphs.values():
        for artifact in graph.artifacts:
            if artifact.file == path.name and artifact.backend == "tensorrt":
                return artifact
    raise UserError(f"{path}: not a TensorRT artifact of the package's manifest")


class TrtSession(GraphSession):
    """One engine: a context per profile, scratch buffers, shape checks."""

    def __init__(
        self,
        backend: TrtBackend,
        engine: Any,
        name: str,
        artifact: Artifact,
        dims: Mapping[str, DimSpec],
        profile_names: Sequence[str] = (),
    ) -> None:
        self.backend, self.engine, self.name, self.dims = backend, engine, name, dims
        self.cuda, trt = backend.cuda, backend.trt
        specs = {s.name: s for s in (*artifact.inputs, *artifact.outputs)}
        self.inputs, self.outputs = {}, {}
        for index in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(index)
            spec = TensorSpec(
                tensor, dtype_name(engine.get_tensor_dtype(tensor)), specs[tensor].dims
            )
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[tensor] = spec
        self.profiles = self._read_profiles(profile_names)
        self.scratch = ScratchPool(self.cuda)
        self.contexts = self._contexts()

    def _read_profiles(self, names: Sequence[str]) -> list[ShapeProfile]:
        profiles = []
        for index in range(self.engine.num_optimization_profiles):
            shapes = {
                tensor: tuple(
                    tuple(int(d) for d in s)
                    for s in self.engine.get_tensor_profile_shape(tensor, index)
                )
                for tensor in self.inputs
            }
            label = names[index] if index < len(names) else f"profile {index}"
            profiles.append(ShapeProfile(label, shapes))  # type: ignore[arg-type]
        return profiles

    def _contexts(self) -> list[Any]:
        """One context per profile, all on one device-memory block (they never run at once)."""
        trt, engine = self.backend.trt, self.engine
        count = engine.num_optimization_profiles
        size = max(profile_memory(engine, p) for p in range(count))
        self.memory = DeviceBuffer(self.cuda, max(size, 1))
        contexts = []
        for index in range(count):
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            context = engine.create_execution_context(strategy)
            if context is None:
                raise UserError(f"{self.name}: TensorRT could not create an execution context")
            if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
                context.set_device_memory(self.memory.pointer, size)
            else:
                context.device_memory = self.memory.pointer
            if not context.set_optimization_profile_async(index, self.cuda.stream):
                raise UserError(f"{self.name}: TensorRT refused optimisation profile {index}")
            contexts.append(context)
        return contexts

    @property
    def frame_limit(self) -> int | None:
        """Most frames per call of a frame-local graph (one input led by ``frames``)."""
        specs = list(self.inputs.values())
        if len(specs) != 1 or not specs[0].dims or specs[0].dims[0] != "frames":
            return None
        return max(p.shapes[specs[0].name][2][0] for p in self.profiles)

    def run(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        limit = self.frame_limit
        if limit and not write_to and len(feeds) == 1:
            ((name, value),) = feeds.items()
            if value.shape[0] > limit:
                return self._run_split(name, value, limit, fetch)
        return self._run_once(feeds, write_to, fetch)

    def _run_split(self, name: str, value: Any, limit: int, fetch) -> dict[str, np.ndarray]:
        """Frame-local graphs: run chunks of ``limit`` frames, join along each output's frames."""
        value = value.numpy() if isinstance(value, DeviceArray) else value
        parts = [
            self._run_once({name: value[i : i + limit]}, None, fetch)
            for i in range(0, value.shape[0], limit)
        ]
        joined = {}
        for out in parts[0]:
            axis = next(i for i, d in enumerate(self.outputs[out].dims) if isinstance(d, str))
            joined[out] = np.concatenate([part[out] for part in parts], axis=axis)
        return joined

    def _run_once(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        write_to = write_to or {}
        fetch = [n for n in self.outputs if n not in write_to] if fetch is None else list(fetch)
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise ValueError(f"{self.name}: inputs {missing} not given")
        shapes = {name: tuple(int(d) for d in feeds[name].shape) for name in self.inputs}
        try:
            context = self.contexts[select_profile(self.profiles, shapes)]
        except UserError as exc:
            raise UserError(f"{self.name}: {exc}") from None
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                raise UserError(f"{self.name}: TensorRT refused shape {shape} for {name}")
            self._bind(context, name, self._input_pointer(name, feeds[name]))
        after = self._bind_outputs(
            context, bind_sizes(self.inputs.values(), shapes, self.dims), write_to
        )
        if not context.execute_async_v3(self.cuda.stream):
            raise RuntimeError(f"TensorRT failed to run {self.name}: {self.backend.logger.tail()}")
        for dst, src, nbytes in after:  # rows that could not be written in place
            self.cuda.copy(dst, src, nbytes, DEVICE_TO_DEVICE)
        results = {name: self._download(name) for name in fetch}
        self.cuda.synchronize()
        return results

    def _bind(self, context: Any, name: str, pointer: int) -> None:
        if not context.set_tensor_address(name, pointer):
            raise RuntimeError(
                f"TensorRT refused the address of {name} in {self.name}: "
                f"{self.backend.logger.tail(2)}"
            )

    def _input_pointer(self, name: str, value: np.ndarray | DeviceArray) -> int:
        """An aligned device address holding the input (copied when it is not one)."""
        dtype = np.dtype(self.inputs[name].dtype)
        if isinstance(value, TrtDeviceArray):
            if value.dtype != dtype:
                raise ValueError(f"{self.name}: {name} is {value.dtype}, the engine takes {dtype}")
            if is_aligned(value.pointer) and value.nbytes:
                return value.pointer
            buffer = self.scratch.get(f"in:{name}", value.nbytes)
            if value.nbytes:
                self.cuda.copy(buffer.pointer, value.pointer, value.nbytes, DEVICE_TO_DEVICE)
            return buffer.pointer
        if isinstance(value, DeviceArray):
            value = value.numpy()  # a host array of another backend
        host = np.ascontiguousarray(value, dtype=dtype)
        buffer = self.scratch.get(f"in:{name}", host.nbytes)
        if host.nbytes:
            self.cuda.copy(buffer.pointer, host.ctypes.data, host.nbytes, HOST_TO_DEVICE)
        return buffer.pointer

    def _bind_outputs(
        self, context: Any, sizes: Mapping[str, int], write_to: Mapping[str, DeviceArray]
    ) -> list[tuple[int, int, int]]:
        """Bind every output; return the copies of scratch into misaligned targets."""
        after = []
        self.shapes = {}
        for name, spec in self.outputs.items():
            shape = spec.shape(dict(sizes))
            self.shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            target = write_to.get(name)
            if target is not None and tuple(target.shape) != shape:
                raise ValueError(f"{self.name}: {name} is {shape}, its target {target.shape}")
            if isinstance(target, TrtDeviceArray) and is_aligned(target.pointer) and nbytes:
                self._bind(context, name, target.pointer)  # new KV rows straight into the cache
                continue
            buffer = self.scratch.get(f"out:{name}", nbytes)
            self._bind(context, name, buffer.pointer)
            if target is not None and nbytes:
                if not isinstance(target, TrtDeviceArray):
                    raise ValueError(f"{self.name}: {name} must be written to a TensorRT array")
                after.append((target.pointer, buffer.pointer, nbytes))
        return after

    def _download(self, name: str) -> np.ndarray:
        host = np.empty(self.shapes[name], dtype=np.dtype(self.outputs[name].dtype))
        if host.nbytes:
            pointer = self.scratch.get(f"out:{name}", host.nbytes).pointer
            self.cuda.copy(host.ctypes.data, pointer, host.nbytes, DEVICE_TO_HOST)
        return host
