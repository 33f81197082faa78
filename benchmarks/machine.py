"""The machine a benchmark ran on: its name, memory bandwidth and matmul throughput."""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def machine_name() -> str:
    """CPU model, cores and memory, as one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM"


def bandwidth_gbs(size_mb: int = 512, repeats: int = 5, threads: int = 2) -> float:
    """Read bandwidth in GB/s: the best of ``repeats`` sums over a buffer far beyond cache,
    split over ``threads`` threads like the runtime's matmuls (one thread reads about half
    of what two do on this kind of machine)."""
    data = np.ones(size_mb * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda part: part.sum(dtype=np.float32), parts))  # numpy drops the GIL
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """float32 GEMM throughput in GFLOP/s (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def describe(threads: int = 2) -> dict[str, object]:
    """``machine`` of the JSON report, measured now with ``threads`` threads."""
    return {
        "name": machine_name(),
        "threads": threads,
        "bandwidth_gbs": round(bandwidth_gbs(threads=threads), 2),
        "gflops": round(matmul_gflops(), 1),
    }


def gpu_bandwidth_gbs(size_mb: int = 2048, repeats: int = 10) -> float:
    """The CUDA device's read bandwidth in GB/s: the best of ``repeats`` sums over a
    float16 buffer far beyond its caches, timed with CUDA events."""
    import torch

    data = torch.ones(size_mb * 2**20 // 2, dtype=torch.float16, device="cuda")
    best = float("inf")
    for _ in range(repeats + 1):  # the first sum loads the kernel
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        data.sum(dtype=torch.float32)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    del data
    torch.cuda.empty_cache()
    return size_mb * 2**20 / best / 1e9


def gpu_matmul_gflops(size: int = 8192, repeats: int = 5) -> float:
    """float16 GEMM throughput of the CUDA device in GFLOP/s (best of ``repeats``)."""
    import torch

    a, b = (torch.randn(size, size, dtype=torch.float16, device="cuda") for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * size**3 / best / 1e9


def describe_gpu() -> dict[str, object]:
    """``machine`` of the JSON report for ``--provider cuda``: the GPU, measured now."""
    import torch

    from ..runtime.errors import UserError

    if not torch.cuda.is_available():
        raise UserError("--provider cuda: PyTorch sees no CUDA device here")
    props = torch.cuda.get_device_properties(0)
    return {
        "name": f"{props.name}, {props.total_memory / 2**30:.0f} GiB; host: {machine_name()}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "bandwidth_gbs": round(gpu_bandwidth_gbs(), 1),
        "gflops": round(gpu_matmul_gflops(), 0),
    }
