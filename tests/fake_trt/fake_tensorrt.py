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
import json
import types

import numpy as np
import onnxruntime as ort

from fake_trt.fake_builder import make_builder
from fake_trt.fake_cudart import stream_address
from fake_trt.trt_types import (
    CPU,
    CROSS_MAJOR,
    MAGIC,
    NUMPY,
    BuilderFlag,
    DataType,
    ExecutionContextAllocationStrategy,
    ILogger,
    IProgressMonitor,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    TensorIOMode,
    error,
    hardware_levels,
    version_tuple,
)


def make_module(device, version: str = "10.3.0.30") -> types.ModuleType:
    """A ``tensorrt`` module posing as ``version`` over the fake CUDA ``device``."""
    module = types.ModuleType("tensorrt")
    api = version_tuple(version)
    state = types.SimpleNamespace(oom=False, version=version, plans_read=0, switch_fails=False)
    levels = hardware_levels(api)
    OnnxParser, Builder = make_builder(device, state, levels)

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
