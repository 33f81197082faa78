"""A test double of the ``tensorrt`` module: "engines" that run in ONNX Runtime.

A fake plan is a magic line and a JSON header naming the source ONNX file,
its I/O and the optimisation profiles. A fake execution context reads its
inputs from, and writes its outputs to, the (host) addresses it was given,
and enforces what real TensorRT enforces: 256-byte aligned addresses inside
device allocations, input shapes inside the active profile, device memory
set for user-managed contexts, every tensor bound before ``execute_async_v3``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

MAGIC = b"FAKE-TRT-PLAN\n"
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


def _enum(name: str, *members: str) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})


DataType = _enum("DataType", "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64")
TensorIOMode = _enum("TensorIOMode", "NONE", "INPUT", "OUTPUT")
NetworkDefinitionCreationFlag = _enum(
    "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "UNUSED", "STRONGLY_TYPED"
)
BuilderFlag = _enum("BuilderFlag", "FP16", "INT8", "VERSION_COMPATIBLE")
MemoryPoolType = _enum("MemoryPoolType", "WORKSPACE")
HardwareCompatibilityLevel = _enum(
    "HardwareCompatibilityLevel", "NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"
)
ExecutionContextAllocationStrategy = _enum(
    "ExecutionContextAllocationStrategy", "STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"
)


class ILogger:
    Severity = _enum("Severity", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


def make_module(device, version: str = "10.3.0.30") -> types.ModuleType:
    """A ``tensorrt`` module over the fake CUDA ``device`` (tests/fake_trt/fake_cudart.py)."""
    module = types.ModuleType("tensorrt")
    state = types.SimpleNamespace(oom=False, version=version)

    def error(logger, text: str) -> None:
        logger.log(ILogger.Severity.ERROR, text)

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.logger, self.errors = network, logger, []

        def parse_from_file(self, path: str) -> bool:
            if not Path(path).is_file():
                self.errors.append(f"cannot open {path}")
                return False
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            io = [(a.name, ORT_TYPES[a.type], "INPUT") for a in session.get_inputs()]
            io += [(a.name, ORT_TYPES[a.type], "OUTPUT") for a in session.get_outputs()]
            self.network.source, self.network.io = str(Path(path).resolve()), io
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
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Config:
        def __init__(self) -> None:
            self.profiles, self.flags_set, self.limits = [], set(), {}
            self.builder_optimization_level, self.progress_monitor = 3, None
            self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
            self.cache = None

        def set_memory_pool_limit(self, pool, size) -> None:
            self.limits[pool] = size

        def set_flag(self, flag) -> None:
            self.flags_set.add(flag)

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes):
            return types.SimpleNamespace(serialize=lambda: b"fake timing cache " + bytes(data[:0]))

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0):
            return types.SimpleNamespace(flags=flags, source=None, io=[])

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
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
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 1)
                config.progress_monitor.phase_finish("Building engine")
            header = {"source": network.source, "io": network.io, "profiles": config.profiles}
            header["version"] = state.version
            return MAGIC + json.dumps(header).encode()

    class Engine:
        def __init__(self, header) -> None:
            self.header, self.io = header, header["io"]
            self.session = ort.InferenceSession(header["source"], providers=CPU)

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

        def get_device_memory_size_for_profile_v2(self, index):
            return 4096 * (index + 1)  # distinct per profile: the block must fit the largest

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            return Context(self, strategy)

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger, self.engine_host_code_allowed = logger, False

        def deserialize_cuda_engine(self, data: bytes):
            if not bytes(data).startswith(MAGIC):
                error(self.logger, "fake: serialization assertion failed (not a plan)")
                return None
            header = json.loads(bytes(data)[len(MAGIC) :])
            if header["version"] != state.version:
                error(self.logger, f"fake: plan built by TensorRT {header['version']}")
                return None
            return Engine(header)

    class Context:
        def __init__(self, engine, strategy) -> None:
            self.engine, self.logger = engine, None
            self.memory = None if strategy == ExecutionContextAllocationStrategy.USER_MANAGED else 1
            self.profile, self.shapes, self.addresses = 0, {}, {}

        def set_device_memory(self, pointer, size) -> None:
            need = max(engine_memory(self.engine))
            assert pointer % 256 == 0 and size >= need and device.room(pointer) >= need
            self.memory = pointer

        def set_optimization_profile_async(self, index, stream) -> bool:
            self.profile, self.shapes = index, {}
            return 0 <= index < self.engine.num_optimization_profiles

        def set_input_shape(self, name, shape) -> bool:
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            if len(shape) != len(low):
                return False
            if not all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes.get(name, (-1,))

        def set_tensor_address(self, name, pointer) -> bool:
            if pointer % 256 or device.owner(pointer, 0) is None:
                return False
            self.addresses[name] = pointer
            return True

        def execute_async_v3(self, stream) -> bool:
            if self.memory is None:
                return False
            feeds = {}
            for name, dtype, mode in self.engine.io:
                if name not in self.addresses or (mode == "INPUT" and name not in self.shapes):
                    return False
                if mode == "INPUT":
                    feeds[name] = _read(self.addresses[name], self.shapes[name], NUMPY[dtype])
            outputs = [name for name, _, mode in self.engine.io if mode == "OUTPUT"]
            for name, value in zip(outputs, self.engine.session.run(outputs, feeds), strict=True):
                if device.room(self.addresses[name]) < value.nbytes:
                    return False  # the output would overrun its buffer
                value = np.ascontiguousarray(value)
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            return True

    def engine_memory(engine):
        count = engine.num_optimization_profiles
        return [engine.get_device_memory_size_for_profile_v2(i) for i in range(count)]

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
        IProgressMonitor=IProgressMonitor,
        DataType=DataType,
        TensorIOMode=TensorIOMode,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        BuilderFlag=BuilderFlag,
        MemoryPoolType=MemoryPoolType,
        HardwareCompatibilityLevel=HardwareCompatibilityLevel,
        ExecutionContextAllocationStrategy=ExecutionContextAllocationStrategy,
        OnnxParser=OnnxParser,
        Builder=Builder,
        Runtime=Runtime,
    )
    return module
