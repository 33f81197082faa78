"""Which regions are asked onto huge pages, with which advice, and that only the CPU
backend asks (which Pipelines ask: tests/test_int4.py)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest

from crosslmm_edge.runtime.backends.huge_pages import (
    HUGE_PAGE,
    MADV_COLLAPSE,
    MADV_HUGEPAGE,
    collapse_resident_memory,
    resident_anonymous_ranges,
)

MB = 1 << 20


def _region(start: int, stop: int, perms: str, inode: str, path: str, rss: int) -> str:
    head = f"{start:x}-{stop:x} {perms} 00000000 00:00 {inode}"
    return (
        f"{head} {path}".rstrip() + f"\nSize: {(stop - start) // 1024} kB\nRss: {rss // 1024} kB\n"
    )


SMAPS = "".join(
    [
        # anonymous, resident, unaligned: its aligned inside [4 MB, 12 MB)
        _region(3 * MB, 13 * MB, "rw-p", "0", "", 10 * MB),
        _region(16 * MB, 20 * MB, "rw-p", "0", "[heap]", 4 * MB),  # the heap counts
        _region(32 * MB, 40 * MB, "rw-p", "0", "", 4 * MB),  # half resident: filling it adds
        _region(48 * MB, 56 * MB, "rw-p", "123", "/w/llm.onnx.data", 8 * MB),  # a mapped file
        _region(64 * MB, 72 * MB, "r--p", "0", "", 8 * MB),  # not writable
        _region(80 * MB, 81 * MB, "rw-p", "0", "", 1 * MB),  # smaller than one huge page
        _region(96 * MB, 104 * MB, "rw-p", "0", "[stack]", 8 * MB),
        _region(112 * MB, 116 * MB, "rw-p", "0", "[anon: glibc: malloc arena]", 4 * MB),
    ]
)


def test_only_resident_writable_anonymous_memory_is_chosen_aligned_to_huge_pages() -> None:
    assert resident_anonymous_ranges(SMAPS) == [
        (4 * MB, 12 * MB),
        (16 * MB, 20 * MB),
        (112 * MB, 116 * MB),
    ]
    assert all(
        start % HUGE_PAGE == 0 and stop % HUGE_PAGE == 0
        for start, stop in resident_anonymous_ranges(SMAPS)
    )


@pytest.mark.skipif(sys.platform != "linux", reason="huge pages are a Linux feature")
def test_collapse_is_asked_first_and_older_kernels_get_the_background_advice() -> None:
    calls = []

    def new_kernel(start: int, length: int, advice: int) -> int:
        calls.append((start, length, advice))
        return errno.EAGAIN if start == 16 * MB else 0  # no huge page free for the heap now

    assert collapse_resident_memory(new_kernel, SMAPS) == 12 * MB
    assert [(start, advice) for start, _, advice in calls] == [
        (4 * MB, MADV_COLLAPSE),
        (16 * MB, MADV_COLLAPSE),
        (112 * MB, MADV_COLLAPSE),
    ]

    def old_kernel(start: int, length: int, advice: int) -> int:
        calls.append((start, length, advice))
        return errno.EINVAL if advice == MADV_COLLAPSE else 0

    calls.clear()
    assert collapse_resident_memory(old_kernel, SMAPS) == 16 * MB
    assert [advice for *_, advice in calls] == [MADV_COLLAPSE, MADV_HUGEPAGE] * 3


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps")
def test_this_process_own_smaps_yields_a_resident_array() -> None:
    """The parser reads the real file: a 64 MiB array just written is among the ranges."""
    array = np.ones(64 * MB // 8)
    start = array.ctypes.data
    ranges = resident_anonymous_ranges(Path("/proc/self/smaps").read_text())
    assert any(
        lo <= start + HUGE_PAGE and start + array.nbytes - HUGE_PAGE <= hi for lo, hi in ranges
    )


def test_only_the_cpu_provider_advises(monkeypatch) -> None:
    from crosslmm_edge.runtime.backends import ort_backend

    advised = []
    monkeypatch.setattr(ort_backend, "collapse_resident_memory", lambda: advised.append(1) or 7)
    assert ort_backend.OrtBackend("cpu", 1).use_huge_pages() == 7
    assert ort_backend.OrtBackend("cuda", 1).use_huge_pages() == 0
    assert advised == [1]
