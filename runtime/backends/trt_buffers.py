"""Device buffers for the TensorRT backend: alignment, views, scratch, output shapes.

TensorRT wants every tensor address 256-byte aligned. ``cudaMalloc`` returns
aligned blocks, so whole buffers are fine; a view of KV-cache rows starting at
``past_len`` is aligned only when ``past_len * row_bytes`` is a multiple of 256
(always for Qwen2.5-1.5B fp16: 2 KV heads x 128 x 2 bytes = 512 per row; for
the embedded model in fp16, 128 bytes per row, only every other position).
A misaligned tensor goes through an aligned scratch buffer instead and the
new rows are copied into place after the run.
"""

from __future__ import annotations

import ast
import contextlib
import operator
from collections.abc import Mapping, Sequence

import numpy as np

from ..model.contract import DimSpec, TensorSpec
from .base import DeviceArray
from .cuda_runtime import DEVICE_TO_HOST, HOST_TO_DEVICE, CudaRuntime

ALIGNMENT = 256


def is_aligned(pointer: int) -> bool:
    """Whether TensorRT accepts ``pointer`` as a tensor address."""
    return pointer % ALIGNMENT == 0


def rows_stay_aligned(row_bytes: int) -> bool:
    """Whether every row view of a buffer is aligned (then KV rows are written in place)."""
    return row_bytes % ALIGNMENT == 0


class DeviceBuffer:
    """One ``cudaMalloc`` block, freed when the last view of it goes."""

    def __init__(self, cuda: CudaRuntime, nbytes: int) -> None:
        self.cuda, self.nbytes = cuda, int(nbytes)
        self.pointer = cuda.malloc(self.nbytes)

    def __del__(self) -> None:
        pointer, self.pointer = getattr(self, "pointer", 0), 0
        if pointer:
            with contextlib.suppress(Exception):  # a free at interpreter exit must not raise
                self.cuda.free(pointer)


class TrtDeviceArray(DeviceArray):
    """A batch-1 array in a ``DeviceBuffer``; ``rows`` views share the buffer."""

    def __init__(
        self, buffer: DeviceBuffer, shape: Sequence[int], dtype: np.dtype, offset: int = 0
    ) -> None:
        self.buffer, self.offset = buffer, offset  # offset in bytes
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def pointer(self) -> int:
        return self.buffer.pointer + self.offset

    def rows(self, start: int, stop: int) -> TrtDeviceArray:
        if not 0 <= start <= stop <= self.shape[1]:
            raise ValueError(f"rows {start}:{stop} outside {self.shape[1]}")
        shape = (1, stop - start, *self.shape[2:])
        return TrtDeviceArray(self.buffer, shape, self.dtype, self.offset + start * self.row_bytes)

    def numpy(self) -> np.ndarray:
        host = np.empty(self.shape, dtype=self.dtype)
        if host.nbytes:
            self.buffer.cuda.copy(host.ctypes.data, self.pointer, host.nbytes, DEVICE_TO_HOST)
            self.buffer.cuda.synchronize()
        return host


def device_zeros(cuda: CudaRuntime, shape: Sequence[int], dtype: np.dtype) -> TrtDeviceArray:
    """A zero-filled device array."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    array = TrtDeviceArray(DeviceBuffer(cuda, max(nbytes, 1)), shape, dtype)
    cuda.memset(array.pointer, 0, nbytes)
    return array


def device_copy(cuda: CudaRuntime, host: np.ndarray) -> TrtDeviceArray:
    """A device copy of a host array (the copy is staged before this returns)."""
    host = np.ascontiguousarray(host)
    array = TrtDeviceArray(DeviceBuffer(cuda, max(host.nbytes, 1)), host.shape, host.dtype)
    if host.nbytes:
        cuda.copy(array.pointer, host.ctypes.data, host.nbytes, HOST_TO_DEVICE)
    return array


class ScratchPool:
    """Reusable aligned device buffers by purpose, grown when a larger one is needed."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self.cuda = cuda
        self.buffers: dict[str, DeviceBuffer] = {}

    def get(self, key: str, nbytes: int) -> DeviceBuffer:
        buffer = self.buffers.get(key)
        if buffer is None or buffer.nbytes < nbytes:
            self.buffers.pop(key, None)  # free the old one before the larger allocation
            buffer = self.buffers[key] = DeviceBuffer(self.cuda, max(nbytes, ALIGNMENT))
        return buffer

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.floordiv,  # dims are integers: "visual_len/4*64"
    ast.FloorDiv: operator.floordiv,
}


def eval_dim(expr: str, sizes: Mapping[str, int]) -> int:
    """Evaluate a manifest dim expression ("frames*4", "text_len+visual_len") at ``sizes``."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return int(sizes[node.id])
        raise ValueError(f"unsupported dim expression {expr!r}")

    return value(ast.parse(expr, mode="eval").body)


def bind_sizes(
    inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]], dims: Mapping[str, DimSpec]
) -> dict[str, int]:
    """Every named dim's size: read off the input shapes, derived ones from their ``expr``."""
    sizes: dict[str, int] = {}
    for spec in inputs:
        for dim, size in zip(spec.dims, shapes[spec.name], strict=True):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    for dim in dims.values():
        if dim.name not in sizes and dim.expr:
            sizes[dim.name] = eval_dim(dim.expr, sizes)
    return sizes
