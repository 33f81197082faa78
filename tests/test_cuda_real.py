"""The TensorRT backend's CUDA plumbing on a real GPU: both runtimes, device arrays, row views.

``runtime/backends/cuda_runtime.py`` and ``runtime/backends/trt_buffers.py`` are what the native
TensorRT backend keeps its KV caches and cross K/V in; the rest of the suite
runs them on a host-memory double (tests/fake_trt). These tests need a CUDA
device and skip without one (the development machine and CI have none).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from crosslmm_edge.runtime.backends import cuda_runtime
from crosslmm_edge.runtime.backends.cuda_runtime import (
    DEVICE_TO_DEVICE,
    BindingsRuntime,
    CtypesRuntime,
    CudaError,
    CudaRuntime,
)
from crosslmm_edge.runtime.backends.trt_buffers import (
    ALIGNMENT,
    ScratchPool,
    device_copy,
    device_zeros,
)


def _runtimes() -> list:
    """One parameter per CUDA runtime binding this machine has (skipped if it has none)."""
    found = []
    module = cuda_runtime._bindings_module()
    if module is not None:
        found.append(pytest.param(lambda: BindingsRuntime(module), id="cuda-python"))
    lib = cuda_runtime._libcudart()
    if lib is not None:
        found.append(pytest.param(lambda: CtypesRuntime(lib), id="ctypes-libcudart"))
    return found or [pytest.param(None, id="none")]


@pytest.fixture(params=_runtimes())
def cuda(request) -> CudaRuntime:
    if request.param is None:
        pytest.skip("no CUDA runtime here (neither cuda-python nor libcudart)")
    try:
        return request.param()
    except (CudaError, OSError) as exc:
        pytest.skip(f"no usable CUDA device here: {exc}")


def test_identity_and_memory(cuda: CudaRuntime) -> None:
    device = cuda.device()
    assert device["name"] and re.fullmatch(r"\d+\.\d+", device["compute_capability"])
    versions = cuda.versions()
    assert versions["runtime"] >= 11000 and versions["driver"] >= versions["runtime"] // 1000 * 1000
    free, total = cuda.memory_info()
    assert 0 < free <= total and total == device["total_memory"]


def test_arrays_round_trip_through_device_memory(cuda: CudaRuntime) -> None:
    host = np.random.default_rng(0).standard_normal((1, 37, 2, 64)).astype(np.float16)
    array = device_copy(cuda, host)
    assert array.pointer % ALIGNMENT == 0
    assert np.array_equal(array.numpy(), host)
    assert np.array_equal(array.rows(5, 19).numpy(), host[:, 5:19])  # base + offset views
    zeros = device_zeros(cuda, host.shape, host.dtype)
    assert not zeros.numpy().any()
    cuda.copy(
        zeros.rows(3, 10).pointer, array.rows(20, 27).pointer, 7 * array.row_bytes, DEVICE_TO_DEVICE
    )
    want = np.zeros_like(host)
    want[:, 3:10] = host[:, 20:27]
    assert np.array_equal(zeros.numpy(), want)
    cuda.memset(zeros.pointer, 0, zeros.nbytes)
    assert not zeros.numpy().any()


def test_scratch_pool_grows_and_frees(cuda: CudaRuntime) -> None:
    pool = ScratchPool(cuda)
    small = pool.get("attn", 1000)
    assert pool.get("attn", 800) is small  # reused while large enough
    free_before, _ = cuda.memory_info()
    large = pool.get("attn", 64 << 20)
    assert large is not small and pool.nbytes == 64 << 20
    assert cuda.memory_info()[0] <= free_before - (64 << 20) + (2 << 20)  # really allocated
    del small, large
    pool.buffers.clear()
    cuda.synchronize()


def test_errors_become_cuda_errors(cuda: CudaRuntime) -> None:
    with pytest.raises(CudaError):
        cuda.malloc(1 << 60)  # an exabyte: cudaErrorMemoryAllocation
