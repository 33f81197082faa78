# ruff: noqa: N801, N802, N815 - the names are cuda-python's
"""A test double of ``cuda.bindings.runtime``: "device" memory is host memory.

Allocations are numpy blocks aligned to 256 bytes, so the addresses are real
pointers the fake TensorRT can read and write. Every copy and memset must
stay inside a live allocation on its device side: a backend that hands a
host pointer where a device one belongs, or overruns a buffer, fails here.

The stream is asynchronous, as CUDA's is: memsets, device-to-device and
device-to-host copies and TensorRT's ``execute_async_v3`` are queued and run
at ``cudaStreamSynchronize`` (or ``cudaFree``, which waits for the device), so
a backend that reads a host result before synchronising reads nothing. A
host-to-device copy takes its source when it is queued (CUDA stages pageable
host memory before ``cudaMemcpyAsync`` returns). ``cudaStreamCreate`` returns
a ``cudaStream_t`` whose ``int()`` warns, as cuda-bindings 12.9.1 deprecated it;
``cuda.bindings.utils.get_cuda_native_handle`` gives the address.
"""

from __future__ import annotations

import ctypes
import enum
import types
import warnings
from collections.abc import Callable

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:
    """A stream handle; ``int()`` on it is deprecated (cuda-bindings 12.9.1 release notes)."""

    def __init__(self, address: int) -> None:
        self._address = address

    def __int__(self) -> int:
        warnings.warn(
            "int(cudaStream_t) is deprecated; use cuda.bindings.utils.get_cuda_native_handle",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._address


def get_cuda_native_handle(obj: cudaStream_t) -> int:
    """``cuda.bindings.utils.get_cuda_native_handle``."""
    return obj._address


def stream_address(stream: object) -> int:
    """What the real bindings accept for a stream argument: the object or a plain int."""
    return stream._address if isinstance(stream, cudaStream_t) else int(stream)  # type: ignore[call-overload]


class Device:
    """The fake GPU: its identity, a memory budget, the live allocations and the stream queue."""

    def __init__(self) -> None:
        self.name, self.major, self.minor = "Fake Orin (test double)", 8, 7
        self.total = 8 << 30
        self.blocks: dict[int, np.ndarray] = {}  # pointer -> backing block
        self.sizes: dict[int, int] = {}
        self.queue: list[Callable[[], None]] = []  # work queued on the stream, in order
        self.failures: list[str] = []  # errors of queued work, reported at the next sync

    def owner(self, pointer: int, nbytes: int) -> int | None:
        """The allocation holding [pointer, pointer + nbytes), if any."""
        for start, size in self.sizes.items():
            if start <= pointer and pointer + nbytes <= start + max(size, 1):
                return start
        return None

    def room(self, pointer: int) -> int:
        """Bytes from ``pointer`` to the end of its allocation (-1 if not device memory)."""
        start = self.owner(pointer, 0)
        return -1 if start is None else start + self.sizes[start] - pointer

    def used(self) -> int:
        return sum(self.sizes.values())

    def drain(self) -> bool:
        """Run the queued work; False if any of it failed (as a sticky CUDA error would)."""
        queue, self.queue = self.queue, []
        for work in queue:
            work()
        failed = bool(self.failures)
        self.failures.clear()
        return not failed


def make_module(device: Device) -> types.ModuleType:
    """A module with the cuda-python calls the runtime makes, over ``device``."""
    ok = cudaError_t.cudaSuccess
    bad = cudaError_t.cudaErrorInvalidValue

    def cudaMalloc(size):
        if device.used() + size > device.total:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        block = np.zeros(int(size) + 256, dtype=np.uint8)
        pointer = block.ctypes.data + (-block.ctypes.data) % 256
        device.blocks[pointer], device.sizes[pointer] = block, int(size)
        return (ok, pointer)

    def cudaFree(pointer):
        device.drain()  # cudaFree waits for the device before it frees
        if pointer not in device.sizes:
            return (bad,)
        del device.blocks[pointer], device.sizes[pointer]
        return (ok,)

    def cudaMemsetAsync(pointer, value, count, stream):
        if count and device.owner(pointer, count) is None:
            return (bad,)
        device.queue.append(lambda: ctypes.memset(pointer, value, count))
        return (ok,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        on_device = {1: (dst,), 2: (src,), 3: (dst, src)}[int(kind)]
        if count and any(device.owner(p, count) is None for p in on_device):
            return (bad,)
        if int(kind) == cudaMemcpyKind.cudaMemcpyHostToDevice:
            staged = ctypes.string_at(src, count)  # pageable memory is staged at the call
            device.queue.append(lambda: ctypes.memmove(dst, staged, count))
        else:
            device.queue.append(lambda: ctypes.memmove(dst, src, count))
        return (ok,)

    def cudaStreamSynchronize(stream):
        stream_address(stream)
        return (ok,) if device.drain() else (bad,)

    def cudaGetDeviceProperties(index):
        name = device.name.encode()
        prop = types.SimpleNamespace(
            name=name, major=device.major, minor=device.minor, totalGlobalMem=device.total
        )
        return (ok, prop)

    module = types.ModuleType("cuda.bindings.runtime")
    module.__dict__.update(
        cudaError_t=cudaError_t,
        cudaMemcpyKind=cudaMemcpyKind,
        cudaStream_t=cudaStream_t,
        cudaMalloc=cudaMalloc,
        cudaFree=cudaFree,
        cudaMemsetAsync=cudaMemsetAsync,
        cudaMemcpyAsync=cudaMemcpyAsync,
        cudaStreamCreate=lambda: (ok, cudaStream_t(7)),
        cudaStreamSynchronize=cudaStreamSynchronize,
        cudaRuntimeGetVersion=lambda: (ok, 12060),
        cudaDriverGetVersion=lambda: (ok, 12060),
        cudaGetDevice=lambda: (ok, 0),
        cudaGetDeviceProperties=cudaGetDeviceProperties,
        cudaMemGetInfo=lambda: (ok, device.total - device.used(), device.total),
    )
    return module
