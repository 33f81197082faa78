"""Inference backends: a session runs one named graph on named arrays.

The runtime talks only to this interface, so ONNX Runtime (CPU, CUDA or
TensorRT execution providers: ``ort_backend.py``) and native TensorRT engines
(``trt_backend.py``) are interchangeable. Arrays that must stay on the
device between steps (KV caches, cross K/V) are ``DeviceArray``s allocated by
the backend; a graph reads them
and writes its outputs straight into slices of them, so a decode step moves
only the new token, the new cache rows and the logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.contract import DimSpec, TensorSpec

# Short names accepted by --provider, best first for the automatic choice.
# TensorRT is never chosen automatically: its first run builds engines for
# minutes, which a user should opt into.
PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("cuda", "cpu")


class DeviceArray(ABC):
    """A preallocated array in the backend's memory, batch size 1.

    ``rows(start, stop)`` views positions along axis 1 without copying; with
    batch 1 such a view is contiguous, so a graph can read or write it in place.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    pointer: int  # address of the first element, in host or device memory

    @abstractmethod
    def rows(self, start: int, stop: int) -> DeviceArray:
        """The view of positions ``start:stop`` along axis 1."""

    @abstractmethod
    def numpy(self) -> np.ndarray:
        """A host copy (or, for host memory, the array itself)."""


class HostArray(DeviceArray):
    """A ``DeviceArray`` in host memory: a contiguous numpy array."""

    def __init__(self, array: np.ndarray) -> None:
        if array.shape[:1] != (1,) or not array.flags.c_contiguous:
            raise ValueError(f"need a contiguous batch-1 array, got {array.shape}")
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype
        # Read once: a decode step addresses dozens of rows and ctypes lookups add up.
        self.pointer: int = array.__array_interface__["data"][0]

    def rows(self, start: int, stop: int) -> HostArray:
        view = HostArray.__new__(HostArray)  # no re-checks: a row range of a valid array
        view.array = self.array[:, start:stop]
        view.shape, view.dtype = view.array.shape, self.dtype
        row_bytes = self.array.strides[1]
        view.pointer = self.pointer + start * row_bytes
        return view

    def numpy(self) -> np.ndarray:
        return self.array


class GraphSession(ABC):
    """One loaded graph."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @abstractmethod
    def run(
        self,
        feeds: Mapping[str, np.ndarray | DeviceArray],
        write_to: Mapping[str, DeviceArray] | None = None,
        fetch: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the graph.

        feeds: every input, host arrays or device arrays (device arrays are
        read in place). write_to: outputs written in place into device arrays
        of exactly the output's shape. fetch: outputs returned as host arrays
        (default: every output not in ``write_to``).
        """


class Backend(ABC):
    """Loads graphs and owns the memory they read and write."""

    name: str
    provider: str
    device: str  # "cpu" or "cuda": where its arrays live

    @abstractmethod
    def load(
        self,
        path: Path,
        name: str,
        inputs: Sequence[TensorSpec] = (),
        dims: Mapping[str, DimSpec] | None = None,
        sha256: Sequence[str] = (),
    ) -> GraphSession:
        """Load the graph file ``path``; ``name`` is for messages.

        ``inputs`` and ``dims`` (the manifest's contract) give the dynamic
        ranges that engine builders need for their optimisation profiles.
        ``sha256``: the graph's files' hashes, already checked against them
        (empty when unchecked); a backend may key caches of derived work on it.
        """

    @abstractmethod
    def zeros(self, shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
        """A zero-filled array in the backend's memory."""

    @abstractmethod
    def upload(self, array: np.ndarray) -> DeviceArray:
        """A copy of a host array in the backend's memory (the array itself on CPU)."""

    def use_huge_pages(self) -> int:
        """Ask for huge pages under the host memory the loaded graphs hold; the bytes the
        advice was taken for (0: nothing of this backend's is read from host memory)."""
        return 0


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    offered = set(ort.get_available_providers())
    return [short for short, full in PROVIDER_NAMES.items() if full in offered]


def resolve_provider(requested: str | None) -> str:
    """Map ``--provider`` (short or full name, or None for automatic) to a short name."""
    available = available_providers()
    if requested is None:
        return next(p for p in AUTO_ORDER if p in available)
    wanted = requested.strip().lower()
    aliases = {full.lower(): short for short, full in PROVIDER_NAMES.items()}
    wanted = {"trt": "tensorrt", "gpu": "cuda"}.get(wanted, aliases.get(wanted, wanted))
    if wanted not in available:
        listing = ", ".join(f"{p} ({PROVIDER_NAMES[p]})" for p in available)
        known = "not available in this onnxruntime build" if wanted in PROVIDER_NAMES else "unknown"
        raise UserError(f"execution provider {requested!r} is {known}; available: {listing}")
    return wanted


BACKEND_KINDS = ("onnx", "tensorrt")


def open_backend(kind: str = "onnx", provider: str | None = None, threads: int = 0) -> Backend:
    """The backend that runs ``kind`` artifacts; for ONNX, on ``provider`` (None: best)."""
    if kind == "onnx":
        from .ort_backend import OrtBackend

        return OrtBackend(resolve_provider(provider), threads=threads)
    if kind == "tensorrt":  # native engines (`build`); --provider does not apply
        from .trt_backend import TrtBackend

        return TrtBackend()
    raise UserError(f"--backend {kind!r}: expected one of {', '.join(BACKEND_KINDS)}")
