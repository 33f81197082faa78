"""The TensorRT path held to TensorRT's real API, on the strict double (tests/fake_trt).

Each test names what TensorRT (10.0, 10.3, 10.16 or 11.1 headers and Python
bindings) or cuda-python does that the code must survive; the double does the
same. Real TensorRT never ran here.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from fake_trt import install, set_version

from crosslmm_edge.cli import main
from crosslmm_edge.export.tensorrt import trt_build
from crosslmm_edge.export.tensorrt.trt_build import BuildSettings, build_package
from crosslmm_edge.runtime.backends import cuda_runtime, trt_backend
from crosslmm_edge.runtime.backends.trt_common import capturing_logger
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.inference.pipeline import Pipeline
from crosslmm_edge.runtime.package.manifest import load_manifest


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error:")
    return lines[-1]


def test_same_compute_capability_is_offered_from_tensorrt_10_9(package, monkeypatch, capsys):
    """kSAME_COMPUTE_CAPABILITY is in NvInfer.h from v10.9.0; JetPack 6.1/6.2 ship 10.3."""
    install(monkeypatch, version="10.3.0.30")
    settings = BuildSettings(hardware_compatibility="SAME_COMPUTE_CAPABILITY")
    with pytest.raises(UserError, match=r"TensorRT 10\.3\.0\.30 offers NONE, AMPERE_PLUS"):
        build_package(package, settings, log=lambda _: None)
    args = ["build", str(package), "--hardware-compatibility", "SAME_COMPUTE_CAPABILITY"]
    assert main(args) == 2 and "SAME_COMPUTE_CAPABILITY" in _error_line(capsys)
    assert not list(package.glob("*.plan"))


def test_same_compute_capability_builds_on_tensorrt_10_16(package, monkeypatch):
    install(monkeypatch, version="10.16.0.72")
    args = ["build", str(package), "--hardware-compatibility", "SAME_COMPUTE_CAPABILITY"]
    assert main(args) == 0
    record = load_manifest(package).graphs["llm"].find("tensorrt", "fp16").build
    assert record["hardware_compatibility"] == "SAME_COMPUTE_CAPABILITY"


def test_version_compatible_plans_are_read_back_and_load_on_a_later_tensorrt(package, monkeypatch):
    """Such plans embed the lean runtime: a Runtime reads them only with
    engine_host_code_allowed (IRuntime::setEngineHostCodeAllowed, default false);
    TensorRT 10 version-compatible engines run on TensorRT 11 (support matrix)."""
    _, trt = install(monkeypatch)
    assert main(["build", str(package), "--version-compatible"]) == 0
    record = load_manifest(package).graphs["llm"].find("tensorrt", "fp16").build
    assert record["version_compatible"] is True
    set_version(trt, "11.1.0.7")
    Pipeline(package, backend="tensorrt", precision="fp16")


def test_a_refused_profile_switch_is_one_user_error(package, monkeypatch):
    """set_optimization_profile_async raises RuntimeError in the bindings (pyCore.cpp,
    PY_ASSERT_RUNTIME_ERROR, 10.0 to 11.1); it never returns False."""
    _, trt = install(monkeypatch)
    assert main(["build", str(package)]) == 0
    trt.state.switch_fails = True
    with pytest.raises(UserError, match="refused optimisation profile 0"):
        Pipeline(package, backend="tensorrt", precision="fp16")


def test_tensorrt_8_is_refused_with_one_error_line(package, monkeypatch, capsys):
    install(monkeypatch, version="8.6.1.6")
    assert main(["build", str(package)]) == 2
    line = _error_line(capsys)
    assert "TensorRT 8.6.1.6" in line and "10 or later" in line


def test_a_wrong_output_dimension_is_an_error_not_a_write_past_a_buffer(package, monkeypatch):
    """Output buffers are compared with context.get_tensor_shape after set_input_shape."""
    install(monkeypatch)
    assert main(["build", str(package)]) == 0
    real = trt_backend.bind_sizes

    def one_too_many(inputs, shapes, dims):
        sizes = real(inputs, shapes, dims)
        return {**sizes, "seq_len": sizes["seq_len"] + 1} if "seq_len" in sizes else sizes

    monkeypatch.setattr(trt_backend, "bind_sizes", one_too_many)  # a wrong dim expression
    pipeline = Pipeline(package, backend="tensorrt", precision="fp16")
    cache = pipeline.new_cache(64)
    inputs = pipeline.sessions["llm"].inputs
    empty = {n: pipeline.shapes.no_memory() for n in inputs if n[:4] in ("t2v_", "v2v_")}
    with pytest.raises(UserError, match=r"TensorRT computes .* the manifest says"):
        pipeline.prefill(cache, [5, 6, 7], pipeline.shapes.no_visual(), empty)


def test_the_build_log_drops_verbose_and_keeps_every_error(package, monkeypatch, capsys):
    """A failed build logs memory-usage lines after its error (the double logs 30 INFO
    lines): the out-of-memory error must still be found."""
    _, trt = install(monkeypatch)
    logger = capturing_logger(trt)
    logger.log(trt.ILogger.Severity.VERBOSE, "tactic timed")
    assert not logger.lines  # VERBOSE never reaches the kept lines
    trt.state.oom = True
    assert main(["build", str(package), "--workspace-mb", "64"]) == 2
    err = capsys.readouterr().err
    assert "ran out of GPU memory" in err and "[VERBOSE]" not in err


def test_build_peak_host_memory_is_two_plans(package, monkeypatch):
    """Jetson memory is unified: the network's weight copies, the plan, a bytes copy of it
    and the read-back engine must not all live at once. The double's network and engine
    each hold a copy of the weights and its plan is their size."""
    install(monkeypatch)
    peaks = []
    real = trt_build.build_engine

    def measured(*args, **kwargs):
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        try:
            return real(*args, **kwargs)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1] - start)

    monkeypatch.setattr(trt_build, "build_engine", measured)
    weights = (package / "llm.fp16.onnx").stat().st_size  # the largest graph
    tracemalloc.start()
    try:
        build_package(package, BuildSettings(), log=lambda _: None)
    finally:
        tracemalloc.stop()
    print(f"largest build_engine peak: {max(peaks) / weights:.2f} x the LLM's weights")
    assert max(peaks) < 2.5 * weights


def test_a_timing_cache_from_another_gpu_is_replaced(package, monkeypatch, capsys):
    """IBuilderConfig::setTimingCache returns false for a cache made on another device."""
    install(monkeypatch)
    cache = package.parent / "t.cache"
    cache.write_bytes(b"FAKE-TIMING-CACHE RTX 4090|8.9|10.3.0.30")
    assert main(["build", str(package), "--timing-cache", str(cache)]) == 0
    assert "another GPU or TensorRT" in capsys.readouterr().err
    assert b"Fake Orin" in cache.read_bytes()


def test_the_stream_handle_comes_from_the_native_handle_utility(monkeypatch):
    """int(cudaStream_t) is deprecated from cuda-bindings 12.9.1 (get_cuda_native_handle)."""
    install(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert cuda_runtime.open_cuda_runtime().stream == 7
    install(monkeypatch, native_handle=False)  # cuda-python 12.6 (JetPack 6): int() it is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 12.6's int() does not warn
        assert cuda_runtime.open_cuda_runtime().stream == 7


def test_libcudart_13_is_looked_for(monkeypatch):
    """JetPack 7 and desktop CUDA 13 ship libcudart.so.13."""
    tried = []

    def refuse(name):
        tried.append(name)
        raise OSError(name)

    monkeypatch.setattr(cuda_runtime.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(cuda_runtime.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(cuda_runtime.ctypes, "CDLL", refuse)
    assert cuda_runtime._libcudart() is None
    assert "libcudart.so.13" in tried and tried.index("libcudart.so.13") < tried.index(
        "libcudart.so.12"
    )


@pytest.mark.parametrize("version", ["10.0.1.6", "10.16.0.72"])
def test_other_tensorrt_10_releases_build_and_answer(package, monkeypatch, version):
    """10.0 has only device_memory and get_device_memory_size_for_profile (the _v2
    calls are 10.1's): the fallbacks run on the double posing as 10.0."""
    _, trt = install(monkeypatch, version=version)
    assert main(["build", str(package)]) == 0
    pipeline = Pipeline(package, backend="tensorrt", precision="fp16")
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    _, embeds, cross = pipeline.encode([pixels])
    cache = pipeline.new_cache(64)
    logits = pipeline.prefill(cache, [1, 2], pipeline.upload(embeds), cross)
    assert np.isfinite(np.asarray(logits)).all() and trt.state.plans_read >= 3


def test_the_double_refuses_what_tensorrt_refuses(monkeypatch):
    _, trt = install(monkeypatch)
    profile = trt.Builder(None).create_optimization_profile()
    with pytest.raises(RuntimeError):
        profile.set_shape("x", (1, 4), (1, 2), (1, 8))  # opt below min
    with pytest.raises(RuntimeError):
        profile.set_shape("x", (1, 1), (1, 2, 3), (1, 8))  # ranks differ
    assert not hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY")
    runtime = cuda_runtime.open_cuda_runtime()
    array = trt_backend.device_copy(runtime, np.arange(64, dtype=np.float32))
    host = np.zeros(64, np.float32)
    runtime.copy(host.ctypes.data, array.pointer, host.nbytes, cuda_runtime.DEVICE_TO_HOST)
    assert not host.any()  # queued on the stream: nothing arrives before synchronising
    runtime.synchronize()
    assert host[-1] == 63
