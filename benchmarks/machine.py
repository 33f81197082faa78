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
