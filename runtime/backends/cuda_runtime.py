"""The few CUDA runtime calls the TensorRT backend needs, without torch or pycuda.

``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` in releases
before 12.6.1) when it is importable, else ``ctypes`` over ``libcudart``
(JetPack ships it in /usr/local/cuda/lib64). Pointers are plain ints; every
copy and memset is queued on the one stream the backend runs TensorRT on, so
work stays in order without extra synchronisation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
from abc import ABC, abstractmethod
from typing import Any

from ..errors import UserError

HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 1, 2, 3  # cudaMemcpyKind
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor
PROP_BUFFER = 4096  # cudaDeviceProp is ~1 KiB in CUDA 12; its first field is char name[256]


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


class CudaRuntime(ABC):
    """Device memory, copies and one stream."""

    stream: int

    @abstractmethod
    def malloc(self, nbytes: int) -> int:
        """Device memory of ``nbytes`` (cudaMalloc aligns to at least 256 bytes)."""

    @abstractmethod
    def free(self, pointer: int) -> None:
        """Release ``malloc``'s memory."""

    @abstractmethod
    def memset(self, pointer: int, value: int, nbytes: int) -> None:
        """Fill bytes on the stream."""

    @abstractmethod
    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        """Queue a copy of ``kind`` (HOST_TO_DEVICE, ...) on the stream."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""

    @abstractmethod
    def versions(self) -> dict[str, int]:
        """{"runtime": 12060, "driver": 12060} as CUDA encodes them (1000·major + 10·minor)."""

    @abstractmethod
    def device(self) -> dict[str, Any]:
        """Current device: name, compute capability "8.7", total memory in bytes."""

    @abstractmethod
    def memory_info(self) -> tuple[int, int]:
        """(free, total) device memory in bytes."""


class BindingsRuntime(CudaRuntime):
    """``cuda-python``: every call returns (error, results...)."""

    def __init__(self, module: Any) -> None:
        self.rt = module
        self.stream = native_handle(self._call("cudaStreamCreate"))

    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        error, values = result[0], result[1:]
        if error != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{name} failed: {getattr(error, 'name', error)}")
        return values[0] if len(values) == 1 else values

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", max(int(nbytes), 1)))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", pointer)

    def memset(self, pointer: int, value: int, nbytes: int) -> None:
        self._call("cudaMemsetAsync", pointer, value, nbytes, self.stream)

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        kinds = self.rt.cudaMemcpyKind
        member = {
            HOST_TO_DEVICE: kinds.cudaMemcpyHostToDevice,
            DEVICE_TO_HOST: kinds.cudaMemcpyDeviceToHost,
            DEVICE_TO_DEVICE: kinds.cudaMemcpyDeviceToDevice,
        }[kind]
        self._call("cudaMemcpyAsync", dst, src, nbytes, member, self.stream)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self.stream)

    def versions(self) -> dict[str, int]:
        return {
            "runtime": int(self._call("cudaRuntimeGetVersion")),
            "driver": int(self._call("cudaDriverGetVersion")),
        }

    def device(self) -> dict[str, Any]:
        prop = self._call("cudaGetDeviceProperties", int(self._call("cudaGetDevice")))
        name = prop.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return {
            "name": name,
            "compute_capability": f"{prop.major}.{prop.minor}",
            "total_memory": int(prop.totalGlobalMem),
        }

    def memory_info(self) -> tuple[int, int]:
        free, total = self._call("cudaMemGetInfo")
        return int(free), int(total)


class CtypesRuntime(CudaRuntime):
    """``libcudart`` through ctypes: every call returns a cudaError_t (0 = success)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        stream = ctypes.c_void_p()
        self._call("cudaStreamCreate", ctypes.byref(stream))
        self.stream = int(stream.value or 0)

    def _call(self, name: str, *args: Any) -> None:
        error = getattr(self.lib, name)(*args)
        if error:
            text = self.lib.cudaGetErrorString(error)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(f"{name} failed: error {error} ({text})")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._call("cudaMalloc", ctypes.byref(pointer), ctypes.c_size_t(max(int(nbytes), 1)))
        return int(pointer.value or 0)

    def free(self, pointer: int) -> None:
        self._call("cudaFree", ctypes.c_void_p(pointer))

    def memset(self, pointer: int, value: int, nbytes: int) -> None:
        args = (ctypes.c_void_p(pointer), ctypes.c_int(value), ctypes.c_size_t(nbytes))
        self._call("cudaMemsetAsync", *args, ctypes.c_void_p(self.stream))

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        pointers = (ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes))
        self._call("cudaMemcpyAsync", *pointers, ctypes.c_int(kind), ctypes.c_void_p(self.stream))

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", ctypes.c_void_p(self.stream))

    def _int(self, name: str, *args: Any) -> int:
        value = ctypes.c_int()
        self._call(name, ctypes.byref(value), *args)
        return value.value

    def versions(self) -> dict[str, int]:
        return {
            "runtime": self._int("cudaRuntimeGetVersion"),
            "driver": self._int("cudaDriverGetVersion"),
        }

    def device(self) -> dict[str, Any]:
        index = self._int("cudaGetDevice")
        major = self._int("cudaDeviceGetAttribute", ATTR_CC_MAJOR, index)
        minor = self._int("cudaDeviceGetAttribute", ATTR_CC_MINOR, index)
        prop = ctypes.create_string_buffer(PROP_BUFFER)
        # CUDA 12 renamed the symbol; the struct's first field (the name) is unchanged.
        getter = getattr(self.lib, "cudaGetDeviceProperties_v2", None)
        self._call(
            "cudaGetDeviceProperties_v2" if getter else "cudaGetDeviceProperties", prop, index
        )
        _, total = self.memory_info()
        name = prop.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
        return {"name": name, "compute_capability": f"{major}.{minor}", "total_memory": total}

    def memory_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._call("cudaMemGetInfo", ctypes.byref(free), ctypes.byref(total))
        return int(free.value), int(total.value)


def _bindings_module() -> Any | None:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6.1

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError:
        return None


def native_handle(stream: Any) -> int:
    """The address of a cuda-python ``cudaStream_t`` (what TensorRT takes as a stream).

    ``int()`` on it is deprecated from cuda-bindings 12.9.1, which adds
    ``cuda.bindings.utils.get_cuda_native_handle``; older releases (12.6 on
    JetPack 6) have only ``int()``.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


def _libcudart() -> Any | None:
    # CUDA 13 (JetPack 7, desktop) first, then 12 (JetPack 6).
    candidates = [ctypes.util.find_library("cudart"), "libcudart.so"]
    candidates += ["libcudart.so.13", "libcudart.so.12"]  # pip CUDA packages have no dev symlink
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"), reverse=True)
    for name in filter(None, candidates):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def open_cuda_runtime() -> CudaRuntime:
    """cuda-python if importable, else libcudart; ``UserError`` if neither is there."""
    module = _bindings_module()
    try:
        if module is not None:
            return BindingsRuntime(module)
        lib = _libcudart()
        if lib is not None:
            return CtypesRuntime(lib)
    except CudaError as exc:
        raise UserError(f"CUDA could not start: {exc}") from None
    raise UserError(
        "the TensorRT backend needs the CUDA runtime: install cuda-python matching your "
        "CUDA (pip install 'cuda-python>=12.6,<12.7' on JetPack 6) or put libcudart on "
        "the library path"
    )
