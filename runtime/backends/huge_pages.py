"""Back the process's large resident memory with 2 MiB pages (Linux transparent huge pages).

A CPU decode step streams every weight once. ONNX Runtime's prepacked weights
sit in 4 KiB pages unless their allocator asks for more, and with transparent
huge pages in ``madvise`` mode (the usual default) nothing asks, and the step
walks its weights 4 KiB at a time through the TLB. ``collapse_resident_memory``
asks the kernel to remap anonymous regions that are already resident into huge
pages in place (``madvise(MADV_COLLAPSE)``, Linux 6.1 and newer): the contents
stay where the process sees them and the RSS does not grow, because regions
less than 90 % resident are left alone (an allocator's reserved, untouched
space is never filled in). Older kernels refuse ``MADV_COLLAPSE``; there the regions are
marked ``MADV_HUGEPAGE`` for the kernel's background collapser. With
transparent huge pages set to ``never``, or off Linux, nothing changes.
"""

from __future__ import annotations

import ctypes
import errno
import sys
from collections.abc import Callable
from pathlib import Path

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
MIN_RESIDENT = 0.9  # of a region's size: below it a collapse would add memory

Madvise = Callable[[int, int, int], int]  # (start, length, advice) -> 0 or an errno


def resident_anonymous_ranges(smaps: str) -> list[tuple[int, int]]:
    """Huge-page-aligned (start, stop) inside each writable anonymous region of ``smaps``
    (``/proc/PID/smaps`` text) that is at least ``MIN_RESIDENT`` resident."""
    regions: list[list] = []  # [start, stop, eligible, resident bytes]
    for line in smaps.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            start, stop = (int(part, 16) for part in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            anonymous = fields[4] == "0" and (name in ("", "[heap]") or name.startswith("[anon:"))
            regions.append([start, stop, anonymous and fields[1].startswith("rw"), 0])
        elif fields[:1] == ["Rss:"] and regions:
            regions[-1][3] = int(fields[1]) * 1024
    ranges = []
    for start, stop, eligible, resident in regions:
        aligned = (-(-start // HUGE_PAGE) * HUGE_PAGE, stop // HUGE_PAGE * HUGE_PAGE)
        if eligible and aligned[1] > aligned[0] and resident >= MIN_RESIDENT * (stop - start):
            ranges.append(aligned)
    return ranges


def _libc_madvise() -> Madvise:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def madvise(start: int, length: int, advice: int) -> int:
        return 0 if libc.madvise(start, length, advice) == 0 else ctypes.get_errno()

    return madvise


def collapse_resident_memory(madvise: Madvise | None = None, smaps: str | None = None) -> int:
    """Ask for huge pages under this process's resident anonymous memory; the bytes the
    kernel accepted the advice for (0 off Linux)."""
    if sys.platform != "linux":
        return 0
    try:
        text = smaps if smaps is not None else Path("/proc/self/smaps").read_text()
    except OSError:
        return 0
    madvise = madvise or _libc_madvise()
    accepted = 0
    for start, stop in resident_anonymous_ranges(text):
        failure = madvise(start, stop - start, MADV_COLLAPSE)
        if failure == errno.EINVAL:  # before Linux 6.1: the background collapser's advice
            failure = madvise(start, stop - start, MADV_HUGEPAGE)
        if not failure:  # EAGAIN, ENOMEM: no huge page free now; the region stays as it is
            accepted += stop - start
    return accepted
