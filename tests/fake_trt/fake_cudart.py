# ruff: noqa: N801, N802, N815 - the names are cuda-python's
"""A test double of ``cuda.bindings.runtime``: "device" memory is host memory.

Allocations are numpy blocks aligned to 256 bytes, so the addresses are real
pointers the fake TensorRT can read and write. Every copy and memset must
stay inside a live allocation on its device side: a backend that hands a
host pointer where a device one belongs, or overruns a buffer, fails here.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class Device:
    """The fake GPU: its identity, a memory budget, and the live allocations."""

    def __init__(self) -> None:
        self.name, self.major, self.minor = "Fake Orin (test double)", 8, 7
        self.total = 8 << 30
        self.blocks: dict[int, np.ndarray] = {}  # pointer -> backing block
        self.sizes: dict[int, int] = {}

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
        if pointer not in device.sizes:
            return (bad,)
        del device.blocks[pointer], device.sizes[pointer]
        return (ok,)

    def cudaMemsetAsync(pointer, value, count, stream):
        if count and device.owner(pointer, count) is None:
            return (bad,)
        ctypes.memset(pointer, value, count)
        return (ok,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        on_device = {1: (dst,), 2: (src,), 3: (dst, src)}[int(kind)]
        if count and any(device.owner(p, count) is None for p in on_device):
            return (bad,)
        ctypes.memmove(dst, src, count)
        return (ok,)

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
        cudaMalloc=cudaMalloc,
        cudaFree=cudaFree,
        cudaMemsetAsync=cudaMemsetAsync,
        cudaMemcpyAsync=cudaMemcpyAsync,
        cudaStreamCreate=lambda: (ok, 7),
        cudaStreamSynchronize=lambda stream: (ok,),
        cudaRuntimeGetVersion=lambda: (ok, 12060),
        cudaDriverGetVersion=lambda: (ok, 12060),
        cudaGetDevice=lambda: (ok, 0),
        cudaGetDeviceProperties=cudaGetDeviceProperties,
        cudaMemGetInfo=lambda: (ok, device.total - device.used(), device.total),
    )
    return module
