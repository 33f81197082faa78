"""The ONNX Runtime backend: CPU, CUDA or TensorRT execution providers.

Every graph runs through I/O binding so KV caches and cross K/V stay where
the backend keeps them (host memory, or CUDA memory owned by an ``OrtValue``)
and a graph writes its new cache rows straight into them.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..model.contract import DimSpec, TensorSpec
from . import ort_cache, trt_profiles
from .base import (
    PROVIDER_NAMES,
    Backend,
    DeviceArray,
    GraphSession,
    HostArray,
)
from .cuda_runtime import open_cuda_runtime
from .huge_pages import collapse_resident_memory
from .ort_aligned import AlignedOutputs
from .ort_cache import OptimizedGraphCache

ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
}


class OrtDeviceArray(DeviceArray):
    """A ``DeviceArray`` in CUDA memory, owned by an ``OrtValue``.

    Untested here (no GPU on the development machine); written against the
    documented ``OrtValue`` / ``IOBinding`` API.
    """

    def __init__(self, value, shape: tuple[int, ...], dtype: np.dtype, offset: int = 0) -> None:
        self.value, self.offset = value, offset  # offset in elements from the buffer start
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.pointer = value.data_ptr() + offset * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> OrtDeviceArray:
        row = int(np.prod(self.shape[2:], dtype=np.int64))
        shape = (1, stop - start, *self.shape[2:])
        return OrtDeviceArray(self.value, shape, self.dtype, self.offset + start * row)

    def numpy(self) -> np.ndarray:
        whole = self.value.numpy().reshape(-1)
        size = int(np.prod(self.shape, dtype=np.int64))
        return whole[self.offset : self.offset + size].reshape(self.shape)


class OrtSession(GraphSession):
    """A graph in an ``onnxruntime.InferenceSession``, always run through I/O binding."""

    def __init__(self, session, name: str, device: str, aligned: AlignedOutputs | None = None):
        self.session, self.name, self.device = session, name, device
        self.aligned = aligned  # TensorRT provider: misaligned outputs go through scratch
        self.inputs = {a.name: _spec(a) for a in session.get_inputs()}
        self.outputs = {a.name: _spec(a) for a in session.get_outputs()}
        self._binding: Any = None  # an onnxruntime IOBinding reused across steps (_run_reusing)
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}  # name -> (pointer, shape)
        self._bound_inputs: dict[str, DeviceArray] = {}  # the device array each input holds
        self._out: dict[str, np.ndarray] = {}  # preallocated static-shape outputs
        self._static_outputs = {n for n, spec in self.outputs.items() if _static(spec.dims)}

    def run(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        """Run; static-shape fetched outputs come back in buffers reused on the next run."""
        write_to = write_to or {}
        if fetch is None:
            fetch = [n for n in self.outputs if n not in write_to]
        complete = len(feeds) == len(self.inputs) and len(write_to) + len(fetch) == len(
            self.outputs
        )
        if complete and self._static_outputs.issuperset(fetch):  # e.g. logits [1, V]
            return self._run_reusing(feeds, write_to, fetch)
        return self._run_fresh(feeds, write_to, fetch)

    def _run_reusing(self, feeds, write_to, fetch) -> dict[str, np.ndarray]:
        """One I/O binding kept across runs (decode steps): only what moved is rebound.

        Every input and output is bound on every run, so no binding can go stale;
        device arrays whose pointer and shape did not change (cross K/V, the
        logits buffer) and empty host feeds of an unchanged shape are skipped.
        """
        if self._binding is None:
            self._binding = self.session.io_binding()
        binding = self._binding
        keep_alive = self._bind_inputs(binding, feeds, self._bind_once, self._bound_inputs)
        for name, target in write_to.items():
            self._bind_once(binding.bind_output, name, self._target(name, target))
        for name in fetch:
            if name not in self._out:
                spec = self.outputs[name]
                shape = tuple(int(d) for d in spec.dims)  # _static_outputs: all ints
                self._out[name] = np.empty(shape, dtype=np.dtype(spec.dtype))
            self._bind_once(binding.bind_output, name, HostArray(self._out[name]))
        self._run(binding)
        del keep_alive  # the run is over: the host feeds may go
        return {name: self._out[name] for name in fetch}

    def _target(self, name: str, target: DeviceArray) -> DeviceArray:
        return self.aligned.target(name, target) if self.aligned else target

    def _run(self, binding) -> None:
        """Run; then rows written to scratch are copied into their misaligned targets."""
        self.session.run_with_iobinding(binding)
        if self.aligned is not None:
            binding.synchronize_outputs()
            self.aligned.finish()

    def _bind_inputs(self, binding, feeds, bind_device, held=None) -> list[np.ndarray]:
        """Bind every feed; host arrays are cast to the input's dtype and returned
        (the caller keeps them alive until the run ends). ``held``: the device array
        each input of a kept binding holds; the very same array, or an empty host array
        of the shape bound last run (no V2V memory, no visual tokens), is not bound again."""
        keep_alive = []
        for name, value in feeds.items():
            if held is not None and held.get(name) is value:  # KV buffers, cross K/V
                continue
            if isinstance(value, DeviceArray):
                bind_device(binding.bind_input, name, value)
                if held is not None:
                    held[name] = value
                continue
            array = np.ascontiguousarray(value, dtype=np.dtype(self.inputs[name].dtype))
            if held is not None:
                held.pop(name, None)
                if array.size == 0:  # no contents that could change: bound once per shape
                    if self._bound.get(name) == (0, array.shape):
                        continue
                    self._bound[name] = (0, array.shape)
                else:
                    self._bound.pop(name, None)  # the kept binding must rebind it
            keep_alive.append(array)
            binding.bind_cpu_input(name, array)
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
            self._bind_array(binding.bind_output, name, self._target(name, target))
        for name in fetch:
            binding.bind_output(name, "cpu")
        self._run(binding)
        del keep_alive  # the run is over: the host feeds may go
        values = binding.get_outputs()[len(write_to) :]
        return {name: value.numpy() for name, value in zip(fetch, values, strict=True)}

    def _bind_array(self, bind, name: str, array: DeviceArray) -> None:
        device = "cpu" if isinstance(array, HostArray) else self.device
        bind(name, device, 0, array.dtype.type, list(array.shape), array.pointer)


class OrtBackend(Backend):
    """ONNX Runtime with the CPU, CUDA or TensorRT execution provider."""

    name = "onnxruntime"

    def __init__(
        self,
        provider: str,
        threads: int = 0,
        cache: OptimizedGraphCache | None = None,
        profile_prefix: str | None = None,
    ) -> None:
        self.provider = provider
        self.device = "cpu" if provider == "cpu" else "cuda"
        self.threads = threads
        self.profile_prefix = profile_prefix  # ONNX Runtime's profiler writes PREFIX_*.json
        self.cache = cache if cache is not None else OptimizedGraphCache.default()
        self.loaded_from: dict[str, str] = {}  # graph name -> "cache", "optimized" or "plain"
        self._cuda_libraries_loaded = False
        self.aligned: AlignedOutputs | None = None  # made with the first TensorRT session

    def load(self, path, name, inputs=(), dims=None, sha256=()) -> OrtSession:
        import onnxruntime as ort

        if self.device == "cuda" and not self._cuda_libraries_loaded:
            load_cuda_libraries(ort)
            self._cuda_libraries_loaded = True
        disabled = _unsafe_fusions(ort)
        providers = self._providers(path, inputs, dims)
        key = None
        if sha256 and self.provider == "cpu":  # see ort_cache: only checked graphs, CPU only
            key = self.cache.key(list(sha256), self.provider, ort.__version__, disabled)
        session = self._load_cached(ort, key, providers, disabled, name) if key else None
        if session is None and key:
            session = self._load_caching(ort, path, key, providers, disabled, name)
        if session is None:
            try:
                session = self._session(ort, path, providers, disabled)
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise UserError(f"cannot load graph {name} from {path}: {exc}") from exc
            self.loaded_from[name] = "plain"
        active = session.get_providers()[0]
        if active != PROVIDER_NAMES[self.provider]:
            # ORT silently falls back to the CPU when CUDA/TensorRT cannot start; device
            # buffers bound to such a session would crash, so say it here instead.
            raise UserError(
                f"{PROVIDER_NAMES[self.provider]} could not start for graph {name} "
                f"(ONNX Runtime fell back to {active}); check the CUDA/TensorRT libraries "
                "or use --provider cpu"
            )
        if self.provider == "tensorrt" and self.aligned is None:
            self.aligned = AlignedOutputs(open_cuda_runtime())
        return OrtSession(session, name, self.device, self.aligned)

    def use_huge_pages(self) -> int:
        """CPU provider: the sessions' weights (and the rest of the process's resident
        memory) onto 2 MiB pages, see ``huge_pages.py``; other providers: 0."""
        return collapse_resident_memory() if self.provider == "cpu" else 0

    def _load_cached(self, ort, key, providers, disabled, name):
        """The session of a cached optimized graph, or None (no entry, or it fails)."""
        cached = self.cache.lookup(key)
        if cached is None:
            return None
        try:  # already optimized for exactly this: load it as it is
            session = self._session(ort, cached, providers, disabled, from_cache=True)
        except Exception:  # never let a cache entry stop a good package from opening
            return None
        self.loaded_from[name] = "cache"
        return session

    def _load_caching(self, ort, path, key, providers, disabled, name):
        """A session that also writes its optimized graph to the cache; None if that fails
        (then the caller loads the graph plainly: a cache must never stop a package)."""
        staging = self.cache.staging(key)
        if staging is None:
            return None
        try:
            session = self._session(ort, path, providers, disabled, save_to=staging)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        written = self.cache.commit(key, staging)
        self.loaded_from[name] = "optimized" if written else "plain"
        return session

    def _session(self, ort, path, providers, disabled, from_cache=False, save_to=None):
        """An InferenceSession; ``save_to``: a folder ORT writes its optimized graph into."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        if self.profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = self.profile_prefix
        if from_cache:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if save_to is not None:
            options.optimized_model_filepath = str(save_to / ort_cache.GRAPH)
            for entry, value in (("file_name", ort_cache.DATA), ("min_size_in_bytes", "1024")):
                options.add_session_config_entry(
                    f"session.optimized_model_external_initializers_{entry}", value
                )
        return ort.InferenceSession(
            str(path), options, providers=providers, disabled_optimizers=disabled
        )

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
            trt.update(trt_profiles.trt_profile_options(inputs, dims))
        return [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"]


def load_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN from the nvidia pip packages (``onnxruntime.preload_dlls``,
    ONNX Runtime >= 1.21) before a CUDA session starts.

    ``import torch`` would load them, but the runtime never imports torch. What
    ``preload_dlls`` prints goes to stderr: stdout may be ``ask --json``'s object.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        preload()


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
