"""256-byte aligned output addresses for ONNX Runtime's TensorRT execution provider.

The provider hands the buffer an output is bound to straight to TensorRT
(``BindContextOutput`` in tensorrt_execution_provider.cc calls
``setTensorAddress`` with it and ignores the result), and TensorRT wants every
tensor address 256-byte aligned (``IExecutionContext::setTensorAddress``,
NvInferRuntime.h, 10.0 to 11.1). A view of KV-cache rows is aligned only when
``past_len * row_bytes`` is a multiple of 256 (the embedded model's fp16 rows
are 128 bytes: every other position is not), so such an output is bound to an
aligned scratch buffer and copied into place after the run, as the native
backend does (``trt_buffers``).
"""

from __future__ import annotations

import numpy as np

from .base import DeviceArray
from .cuda_runtime import DEVICE_TO_DEVICE, CudaRuntime
from .trt_buffers import ScratchPool, TrtDeviceArray, is_aligned


class AlignedOutputs:
    """Scratch stand-ins for misaligned output targets, and the copies after the run."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self.cuda = cuda
        self.scratch = ScratchPool(cuda)  # cudaMalloc: 256-byte aligned
        self.pending: list[tuple[int, int, int]] = []  # (target, scratch, bytes)

    def target(self, name: str, array: DeviceArray) -> DeviceArray:
        """What to bind ``name`` to: ``array`` itself when aligned, else a scratch buffer."""
        nbytes = int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize
        if not nbytes or is_aligned(array.pointer):
            return array
        buffer = self.scratch.get(f"out:{name}", nbytes)
        self.pending.append((array.pointer, buffer.pointer, nbytes))
        return TrtDeviceArray(buffer, array.shape, array.dtype)

    def finish(self) -> None:
        """Copy the scratch outputs into their targets (after ONNX Runtime's run)."""
        pending, self.pending = self.pending, []
        for dst, src, nbytes in pending:
            self.cuda.copy(dst, src, nbytes, DEVICE_TO_DEVICE)
        if pending:
            self.cuda.synchronize()  # the next run reads the cache on ONNX Runtime's stream
