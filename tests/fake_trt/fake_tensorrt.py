"""A test double of the ``tensorrt`` module: "engines" that run in ONNX Runtime.

A fake plan is a magic line and a JSON header naming the source ONNX file,
its I/O, the optimisation profiles and how it was built, padded to the size
of the weights (a plan carries them). A fake execution context reads its
inputs from, and writes its outputs to, the (host) addresses it was given.

It refuses what TensorRT refuses (checked against TensorRT's headers and
Python bindings, tags v10.0.0, v10.3.0, v10.16, v11.1): tensor addresses that
are not 256-byte aligned device memory, input shapes outside the active
profile, an unset device memory for user-managed contexts, an unbound tensor
at ``execute_async_v3``; ``set_optimization_profile_async`` raises
``RuntimeError`` (the bindings never return False); ``Profile.set_shape``
raises on mismatched ranks or min > opt > max; ``set_timing_cache`` refuses a
cache from another GPU or version; a version-compatible plan needs
``Runtime.engine_host_code_allowed``. It poses as the TensorRT it is made as
(``make_module(device, version)``): ``HardwareCompatibilityLevel`` has
``SAME_COMPUTE_CAPABILITY`` from 10.9, the ``_v2`` device-memory calls exist
from 10.1, the old ``get_device_memory_size_for_profile`` until 10.x. Work is
queued on the fake CUDA stream and runs at synchronisation.
"""

from __future__ import annotations

import ctypes
import enum
import json
import re
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fake_trt.fake_cudart import stream_address

MAGIC = b"FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE "
CPU = ["CPUExecutionProvider"]
ORT_TYPES = {
    "tensor(float)": "FLOAT",
    "tensor(float16)": "HALF",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
}
NUMPY = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
}
# Version-compatible plans across majors (TensorRT 11.4 support matrix): 8 -> 10, 10 -> 11.
CROSS_MAJOR = {(8, 10), (10, 11)}
VERBOSE_LINES_PER_BUILD = 200  # a real build logs thousands at VERBOSE
INFO_LINES_AFTER_FAILURE = 30  # memory-usage lines TensorRT logs after a failed build


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def _enum(name: str, *members: str) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})


DataType = _enum("DataType", "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64")
TensorIOMode = _enum("TensorIOMode", "NONE", "INPUT", "OUTPUT")
NetworkDefinitionCreationFlag = _enum(
    "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "UNUSED", "STRONGLY_TYPED"
)
BuilderFlag = _enum("BuilderFlag", "FP16", "INT8", "VERSION_COMPATIBLE")
MemoryPoolType = _enum("MemoryPoolType", "WORKSPACE")
ExecutionContextAllocationStrategy = _enum(
    "ExecutionContextAllocationStrategy", "STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"
)


def hardware_levels(version: tuple[int, ...]) -> type[enum.IntEnum]:
    """kSAME_COMPUTE_CAPABILITY first appears in NvInfer.h at v10.9.0."""
    members = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if version >= (10, 9) else [])
    return _enum("HardwareCompatibilityLevel", *members)


class ILogger:
    Severity = _enum("Severity", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class HostMemory(bytearray):
    """``IHostMemory``: supports the buffer protocol (``memoryview``) and ``nbytes``."""

    @property
    def nbytes(self) -> int:
        return len(self)


def make_module(device, version: str = "10.3.0.30") -> types.ModuleType:
    """A ``tensorrt`` module posing as ``version`` over the fake CUDA ``device``."""
    module = types.ModuleType("tensorrt")
    api = version_tuple(version)
    state = types.SimpleNamespace(oom=False, version=version, plans_read=0, switch_fails=False)
    levels = hardware_levels(api)

    def log(logger, severity: str, text: str) -> None:
        logger.log(ILogger.Severity[severity], text)

    def error(logger, text: str) -> None:
        log(logger, "ERROR", text)

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.logger, self.errors = network, logger, []

        def parse_from_file(self, path: str) -> bool:
            if not Path(path).is_file():
                self.errors.append(f"cannot open {path}")
                return False
            session = ort.InferenceSession(path, providers=CPU)
            inputs = session.get_inputs()
            io = [(a.name, ORT_TYPES[a.type], "INPUT") for a in inputs]
            io += [(a.name, ORT_TYPES[a.type], "OUTPUT") for a in session.get_outputs()]
            self.network.source, self.network.io = str(Path(path).resolve()), io
            self.network.ranks = {a.name: len(a.shape) for a in inputs}
            # The network keeps host copies of the weights until it is destroyed.
            files = [Path(path), *Path(path).parent.glob(Path(path).name + ".data")]
            self.network.weights = [np.fromfile(f, np.uint8) for f in files]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class Profile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name, low, opt, high) -> None:
            points = [list(low), list(opt), list(high)]
            if len({len(p) for p in points}) != 1:
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            for a, b, c in zip(*points, strict=True):
                if not 0 <= a <= b <= c:
                    raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self.shapes[name] = points

    class TimingCache:
        def __init__(self, key: str | None) -> None:
            self.key = key

        def serialize(self) -> HostMemory:
            return HostMemory(CACHE_MAGIC + (self.key or "").encode())

    def cache_key() -> str:
        return f"{device.name}|{device.major}.{device.minor}|{state.version}"

    class Config:
        def __init__(self, logger) -> None:
            self.logger = logger
            self.profiles, self.flags_set, self.limits = [], set(), {}
            self.builder_optimization_level, self.progress_monitor = 3, None
            self.hardware_compatibility_level = levels.NONE
            self.cache = None

        def set_memory_pool_limit(self, pool, size) -> None:
            self.limits[pool] = size

        def set_flag(self, flag) -> None:
            self.flags_set.add(flag)

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

        def create_timing_cache(self, data) -> TimingCache:
            data = bytes(data)
            if not data:
                return TimingCache(cache_key())
            if data.startswith(CACHE_MAGIC):
                return TimingCache(data[len(CACHE_MAGIC) :].decode())
            return TimingCache(None)  # not a cache: it will not verify

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            if cache.key != cache_key() and not ignore_mismatch:
                error(self.logger, "fake: timing cache header verification failed (other device)")
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0):
            return types.SimpleNamespace(flags=flags, source=None, io=[], ranks={}, weights=[])

        def create_builder_config(self):
            return Config(self.logger)

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            for index in range(VERBOSE_LINES_PER_BUILD):
                log(self.logger, "VERBOSE", f"fake: tactic {index} timed")
            plan = self._build(network, config)
            if plan is None:
                for index in range(INFO_LINES_AFTER_FAILURE):
                    log(self.logger, "INFO", f"fake: [MemUsageChange] released {index} MiB")
            return plan

        def _build(self, network, config):
            if not network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)):
                error(self.logger, "fake: only strongly typed networks are built here")
                return None
            if state.oom or config.limits.get(MemoryPoolType.WORKSPACE, 0) > device.total:
                error(self.logger, "Requested GPU memory could not be allocated: out of memory")
                return None
            inputs = [name for name, _, mode in network.io if mode == "INPUT"]
            for shapes in config.profiles:
                if sorted(shapes) != sorted(inputs):
                    error(self.logger, "fake: a profile must give every input")
                    return None
                for name, points in shapes.items():
                    if len(points[0]) != network.ranks[name]:
                        error(self.logger, f"fake: profile rank of {name} is not the network's")
                        return None
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 1)
                config.progress_monitor.phase_finish("Building engine")
            header = {
                "source": network.source,
                "io": network.io,
                "profiles": config.profiles,
                "version": state.version,
                "version_compatible": BuilderFlag.VERSION_COMPATIBLE in config.flags_set,
                "hardware": config.hardware_compatibility_level.name,
                "compute_capability": [device.major, device.minor],
                "gpu": device.name,
            }
            text = MAGIC + json.dumps(header).encode() + b"\n"
            plan = HostMemory(len(text) + sum(w.nbytes for w in network.weights))
            plan[: len(text)] = text  # then zeros where a plan carries the weights
            return plan

    def readable(header) -> str | None:
        """Why this TensorRT cannot read a plan with ``header`` (None: it can)."""
        built, running = version_tuple(header["version"]), version_tuple(state.version)
        if header["version_compatible"]:
            majors = (built[0], running[0])
            forward = running >= built and (majors[0] == majors[1] or majors in CROSS_MAJOR)
            if not forward:
                return f"version-compatible plan of TensorRT {header['version']}"
        elif built != running:
            return f"plan built by TensorRT {header['version']}"
        cc = [device.major, device.minor]
        if header["hardware"] == "AMPERE_PLUS":
            return None if cc >= [8, 0] else "the GPU is older than Ampere"
        if cc != header["compute_capability"]:
            return "plan built for another compute capability"
        return None

    class Engine:
        def __init__(self, header, data: memoryview) -> None:
            self.header, self.io = header, header["io"]
            self.session = ort.InferenceSession(header["source"], providers=CPU)
            self.weights = np.frombuffer(data, np.uint8).copy()  # the engine's own copy
            self.output_shapes: dict[tuple, dict[str, tuple]] = {}

        num_io_tensors = property(lambda self: len(self.io))
        num_optimization_profiles = property(lambda self: len(self.header["profiles"]))

        def get_tensor_name(self, index):
            return self.io[index][0]

        def _entry(self, name):
            return next(e for e in self.io if e[0] == name)

        def get_tensor_mode(self, name):
            return TensorIOMode[self._entry(name)[2]]

        def get_tensor_dtype(self, name):
            return DataType[self._entry(name)[1]]

        def get_tensor_profile_shape(self, name, index):
            return self.header["profiles"][index][name]

        def get_device_memory_size_for_profile(self, index):
            return profile_bytes(index)

        get_device_memory_size_for_profile_v2 = get_device_memory_size_for_profile

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            return Context(self, strategy)

        def outputs_for(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
            """Every output's shape at these input shapes (what TensorRT's shape analysis says)."""
            key = tuple(sorted(shapes.items()))
            if key not in self.output_shapes:
                feeds = {
                    name: np.zeros(shapes[name], NUMPY[dtype])
                    for name, dtype, mode in self.io
                    if mode == "INPUT"
                }
                names = [name for name, _, mode in self.io if mode == "OUTPUT"]
                values = self.session.run(names, feeds)
                self.output_shapes[key] = {n: v.shape for n, v in zip(names, values, strict=True)}
            return self.output_shapes[key]

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger, self.engine_host_code_allowed = logger, False

        def deserialize_cuda_engine(self, data):
            view = memoryview(data)
            if bytes(view[: len(MAGIC)]) != MAGIC:
                error(self.logger, "fake: serialization assertion failed (not a plan)")
                return None
            end = bytes(view[: 1 << 16]).index(b"\n", len(MAGIC))
            header = json.loads(bytes(view[len(MAGIC) : end]))
            if header["version_compatible"] and not self.engine_host_code_allowed:
                error(self.logger, "fake: the plan has host code (lean runtime); not allowed")
                return None
            problem = readable(header)
            if problem:
                error(self.logger, f"fake: {problem}")
                return None
            state.plans_read += 1
            return Engine(header, view)

    class Context:
        def __init__(self, engine, strategy) -> None:
            self.engine = engine
            self.memory = None if strategy == ExecutionContextAllocationStrategy.USER_MANAGED else 1
            self.profile, self.shapes, self.addresses = 0, {}, {}

        def _set_memory(self, pointer, size) -> None:
            need = max(map(profile_bytes, range(self.engine.num_optimization_profiles)))
            assert pointer % 256 == 0 and size >= need and device.room(pointer) >= need
            self.memory = pointer

        def set_device_memory(self, pointer, size) -> None:
            self._set_memory(pointer, size)

        device_memory = property(None, lambda self, pointer: self._set_memory(pointer, 1 << 62))

        def set_optimization_profile_async(self, index, stream) -> bool:
            _stream(stream)
            count = self.engine.num_optimization_profiles
            if state.switch_fails or not 0 <= index < count:
                raise RuntimeError("Error in set optimization profile async.")
            self.profile, self.shapes = index, {}
            return True

        def set_input_shape(self, name, shape) -> bool:
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            if len(shape) != len(low):
                return False
            if not all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
                return False
            self.shapes[name] = tuple(int(s) for s in shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            inputs = [n for n, _, mode in self.engine.io if mode == "INPUT"]
            if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT or any(
                n not in self.shapes for n in inputs
            ):
                return (-1,)
            return self.engine.outputs_for(self.shapes)[name]

        def set_tensor_address(self, name, pointer) -> bool:
            if pointer % 256 or device.owner(pointer, 0) is None:
                return False
            self.addresses[name] = pointer
            return True

        def execute_async_v3(self, stream) -> bool:
            _stream(stream)
            if self.memory is None:
                return False
            for name, _, mode in self.engine.io:
                if name not in self.addresses or (mode == "INPUT" and name not in self.shapes):
                    return False
            addresses, shapes = dict(self.addresses), dict(self.shapes)  # read at enqueue
            device.queue.append(lambda: self._run(addresses, shapes))
            return True

        def _run(self, addresses, shapes) -> None:
            feeds = {
                name: _read(addresses[name], shapes[name], NUMPY[dtype])
                for name, dtype, mode in self.engine.io
                if mode == "INPUT"
            }
            outputs = [name for name, _, mode in self.engine.io if mode == "OUTPUT"]
            for name, value in zip(outputs, self.engine.session.run(outputs, feeds), strict=True):
                if device.room(addresses[name]) < value.nbytes:
                    device.failures.append(f"{name} would overrun its buffer")
                    return
                value = np.ascontiguousarray(value)
                ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)

    if api < (10, 1):  # the _v2 calls are TensorRT 10.1's
        del Engine.get_device_memory_size_for_profile_v2, Context.set_device_memory
    if api >= (11,):  # removed in TensorRT 11 (pyCore.cpp at v11.1)
        del Engine.get_device_memory_size_for_profile

    def profile_bytes(index: int) -> int:
        return 4096 * (index + 1)  # distinct per profile: the block must fit the largest

    def _stream(stream) -> int:
        if not isinstance(stream, int):  # pybind11 converts a size_t from an int only
            raise TypeError(f"stream_handle must be an int, not {type(stream).__name__}")
        return stream_address(stream)

    def _read(pointer, shape, dtype):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes == 0:
            return np.zeros(shape, dtype=dtype)
        assert device.room(pointer) >= nbytes, "input outside its device buffer"
        raw = (ctypes.c_uint8 * nbytes).from_address(pointer)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    module.__dict__.update(
        __version__=version,
        state=state,
        ILogger=ILogger,
        DataType=DataType,
        TensorIOMode=TensorIOMode,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        BuilderFlag=BuilderFlag,
        MemoryPoolType=MemoryPoolType,
        HardwareCompatibilityLevel=levels,
        OnnxParser=OnnxParser,
        Builder=Builder,
        Runtime=Runtime,
    )
    if api >= (10,):  # both are TensorRT 10.0's
        module.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
        module.IProgressMonitor = IProgressMonitor
    return module
