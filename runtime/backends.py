"""Inference backends: a session runs one named graph on named arrays.

The runtime talks only to this interface, so ONNX Runtime (CPU, CUDA or
TensorRT execution providers) and, later, a native TensorRT engine are
interchangeable. Arrays that must stay on the device between steps (KV caches,
cross K/V) are ``DeviceArray``s allocated by the backend; a graph reads them
and writes its outputs straight into slices of them, so a decode step moves
only the new token, the new cache rows and the logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from crosslmm_edge.runtime.contract import DimSpec, TensorSpec
from crosslmm_edge.runtime.errors import UserError

# Short names accepted by --provider, best first for the automatic choice.
# TensorRT is never chosen automatically: its first run builds engines for
# minutes, which a user should opt into.
PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("cuda", "cpu")

ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
}


class DeviceArray(ABC):
    """A preallocated array in the backend's memory, batch size 1.

    ``rows(start, stop)`` views positions along axis 1 without copying; with
    batch 1 such a view is contiguous, so a graph can read or write it in place.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

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
    ) -> GraphSession:
        """Load the graph file ``path``; ``name`` is for messages.

        ``inputs`` and ``dims`` (the manifest's contract) give the dynamic
        ranges that engine builders need for their optimisation profiles.
        """

    @abstractmethod
    def zeros(self, shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
        """A zero-filled array in the backend's memory."""

    @abstractmethod
    def upload(self, array: np.ndarray) -> DeviceArray:
        """A copy of a host array in the backend's memory (the array itself on CPU)."""


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
        return OrtBackend(resolve_provider(provider), threads=threads)
    if kind == "tensorrt":  # native engines (`build`); --provider does not apply
        from crosslmm_edge.runtime.trt_backend import TrtBackend

        return TrtBackend()
    raise UserError(f"--backend {kind!r}: expected one of {', '.join(BACKEND_KINDS)}")


class OrtDeviceArray(DeviceArray):
    """A ``DeviceArray`` in CUDA memory, owned by an ``OrtValue``.

    Untested here (no GPU on the development machine); written against the
    documented ``OrtValue`` / ``IOBinding`` API.
    """

    def __init__(self, value, shape: tuple[int, ...], dtype: np.dtype, offset: int = 0) -> None:
        self.value, self.offset = value, offset  # offset in elements from the buffer start
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def rows(self, start: int, stop: int) -> OrtDeviceArray:
        row = int(np.prod(self.shape[2:], dtype=np.int64))
        shape = (1, stop - start, *self.shape[2:])
        return OrtDeviceArray(self.value, shape, self.dtype, self.offset + start * row)

    def numpy(self) -> np.ndarray:
        whole = self.value.numpy().reshape(-1)
        size = int(np.prod(self.shape, dtype=np.int64))
        return whole[self.offset : self.offset + size].reshape(self.shape)

    @property
    def pointer(self) -> int:
        return self.value.data_ptr() + self.offset * self.dtype.itemsize


class OrtSession(GraphSession):
    """A graph in an ``onnxruntime.InferenceSession``, always run through I/O binding."""

    def __init__(self, session, name: str, device: str) -> None:
        self.session, self.name, self.device = session, name, device
        self.inputs = {a.name: _spec(a) for a in session.get_inputs()}
        self.outputs = {a.name: _spec(a) for a in session.get_outputs()}
        self._binding = None  # reused across steps (see _run_reusing)
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}  # name -> (pointer, shape)
        self._out: dict[str, np.ndarray] = {}  # preallocated static-shape outputs

    def run(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        """Run; static-shape fetched outputs come back in buffers reused on the next run."""
        write_to = write_to or {}
        if fetch is None:
            fetch = [n for n in self.outputs if n not in write_to]
        complete = len(feeds) == len(self.inputs) and len(write_to) + len(fetch) == len(
            self.outputs
        )
        if complete and all(_static(self.outputs[n].dims) for n in fetch):  # e.g. logits [1, V]
            return self._run_reusing(feeds, write_to, fetch)
        return self._run_fresh(feeds, write_to, fetch)

    def _run_reusing(self, feeds, write_to, fetch) -> dict[str, np.ndarray]:
        """One I/O binding kept across runs (decode steps): only what moved is rebound.

        Every input and output is bound on every run, so no binding can go stale;
        device arrays whose pointer and shape did not change (cross K/V, the
        logits buffer) are skipped.
        """
        if self._binding is None:
            self._binding = self.session.io_binding()
        binding = self._binding
        keep_alive = self._bind_inputs(binding, feeds, self._bind_once)  # outlive the run
        for name, target in write_to.items():
            self._bind_once(binding.bind_output, name, target)
        for name in fetch:
            if name not in self._out:
                spec = self.outputs[name]
                self._out[name] = np.empty(spec.dims, dtype=np.dtype(spec.dtype))
            self._bind_once(binding.bind_output, name, HostArray(self._out[name]))
        self.session.run_with_iobinding(binding)
        del keep_alive  # the run is over: the host feeds may go
        return {name: self._out[name] for name in fetch}

    def _bind_inputs(self, binding, feeds, bind_device) -> list[np.ndarray]:
        """Bind every feed; host arrays are cast to the input's dtype and returned
        (the caller keeps them alive until the run ends)."""
        keep_alive = []
        for name, value in feeds.items():
            if isinstance(value, DeviceArray):
                bind_device(binding.bind_input, name, value)
            else:
                array = np.ascontiguousarray(value, dtype=np.dtype(self.inputs[name].dtype))
                keep_alive.append(array)
                binding.bind_cpu_input(name, array)
                self._bound.pop(name, None)  # the persistent binding must rebind it
        return keep_alive

    def _bind_once(self, bind, name: str, array: DeviceArray) -> None:
        key = (array.pointer, tuple(array.shape))
        if self._bound.get(name) != key:
            self._bind_array(bind, name, array)
            self._bound[name] = key

    def _run_fresh(self, feeds, write_to, fetch) -> dict[str, np.ndarray]:
        """A new binding and ORT-allocated outputs (dynamic output shapes)."""
        binding = self.session.io_binding()
        keep_alive = self._bind_inputs(binding, feeds, self._bind_array)  # outlive the run
        for name, target in write_to.items():
            self._bind_array(binding.bind_output, name, target)
        for name in fetch:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        del keep_alive  # the run is over: the host feeds may go
        values = binding.get_outputs()[len(write_to) :]
        return {name: value.numpy() for name, value in zip(fetch, values, strict=True)}

    def _bind_array(self, bind, name: str, array: DeviceArray) -> None:
        device = "cpu" if isinstance(array, HostArray) else self.device
        bind(name, device, 0, array.dtype.type, list(array.shape), array.pointer)


class OrtBackend(Backend):
    """ONNX Runtime with the CPU, CUDA or TensorRT execution provider."""

    name = "onnxruntime"

    def __init__(self, provider: str, threads: int = 0) -> None:
        self.provider = provider
        self.device = "cpu" if provider == "cpu" else "cuda"
        self.threads = threads

    def load(self, path, name, inputs=(), dims=None) -> OrtSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        providers = self._providers(path, inputs, dims)
        try:
            session = ort.InferenceSession(
                str(path), options, providers=providers, disabled_optimizers=_unsafe_fusions(ort)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise UserError(f"cannot load graph {name} from {path}: {exc}") from exc
        active = session.get_providers()[0]
        if active != PROVIDER_NAMES[self.provider]:
            # ORT silently falls back to the CPU when CUDA/TensorRT cannot start; device
            # buffers bound to such a session would crash, so say it here instead.
            raise UserError(
                f"{PROVIDER_NAMES[self.provider]} could not start for graph {name} "
                f"(ONNX Runtime fell back to {active}); check the CUDA/TensorRT libraries "
                "or use --provider cpu"
            )
        return OrtSession(session, name, self.device)

    def zeros(self, shape, dtype) -> DeviceArray:
        return self.upload(np.zeros(shape, dtype=dtype))

    def upload(self, array: np.ndarray) -> DeviceArray:
        array = np.ascontiguousarray(array)
        if self.device == "cpu":
            return HostArray(array)
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        return OrtDeviceArray(value, array.shape, array.dtype)

    def _providers(
        self, path: Path, inputs: Sequence[TensorSpec], dims: Mapping[str, DimSpec] | None
    ) -> list:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if self.provider == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        # TensorRT: cache built engines beside the package so the next start is fast, and
        # give one explicit profile over the exported ranges; otherwise every new past
        # length outside the shapes seen so far would rebuild the engine mid-generation.
        trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(path.parent)}
        if inputs and dims:
            trt.update(trt_profile_options(inputs, dims))
        return [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"]


def trt_profile_options(
    inputs: Sequence[TensorSpec], dims: Mapping[str, DimSpec]
) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes``: the profiles `build` uses (runtime/trt_profiles.py).

    Each profile's min, opt and max are consistent points (text + visual =
    sequence length); the LLM gets decode, text and visual profiles. Untested
    on a GPU here.
    """
    from crosslmm_edge.runtime import trt_profiles

    return trt_profiles.trt_profile_options(inputs, dims)


# The first ONNX Runtime release seen to run FusedMatMul(transBatchB) on an empty cache:
# 1.23.2 (the newest with Python 3.10 wheels, JetPack 6's Python) dies with SIGFPE there.
FUSED_TRANSPOSE_SAFE_FROM = (1, 32)


def _unsafe_fusions(ort) -> list[str]:
    """Fusions to switch off on this ONNX Runtime: correct but slower graphs on old ones."""
    try:
        version = tuple(int(part) for part in ort.__version__.split(".")[:2])
    except ValueError:
        version = (0, 0)
    return [] if version >= FUSED_TRANSPOSE_SAFE_FROM else ["MatmulTransposeFusion"]


def _static(dims: tuple) -> bool:
    """A batch-1 shape with no symbolic dim: its output buffer can be reused."""
    return all(isinstance(d, int) for d in dims) and dims[:1] == (1,)


def _spec(arg) -> TensorSpec:
    dims = tuple(d if isinstance(d, int | str) else "?" for d in arg.shape)
    return TensorSpec(arg.name, ONNX_DTYPES.get(arg.type, "float32"), dims)
