"""ONNX Runtime's CUDA provider for real: device arrays, row views, and the embedded
model answering on the GPU with the CPU's tokens.

``OrtDeviceArray`` (``runtime/backends/ort_backend.py``) holds KV caches and
cross K/V in CUDA memory owned by an ``OrtValue``. These tests need
onnxruntime-gpu and a CUDA device and skip without them (the development
machine and CI have neither); ``benchmarks/gpu_check.py`` runs them on a GPU.
One test runs everywhere: the CUDA libraries load without touching stdout.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from crosslmm_edge.runtime.backends.ort_backend import (
    OrtBackend,
    OrtDeviceArray,
    load_cuda_libraries,
)


def _cuda_backend() -> OrtBackend:
    """An ``OrtBackend`` on the CUDA provider, or skip saying what is missing."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDA provider")
    load_cuda_libraries(ort)
    try:
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32), "cuda", 0)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        pytest.skip(f"no usable CUDA device for onnxruntime here: {exc}")
    return OrtBackend("cuda")


def test_device_arrays_and_row_views() -> None:
    backend = _cuda_backend()
    host = np.random.default_rng(0).standard_normal((1, 37, 2, 64)).astype(np.float16)
    array = backend.upload(host)
    assert isinstance(array, OrtDeviceArray) and array.value.device_name() == "cuda"
    assert np.array_equal(array.numpy(), host)
    view = array.rows(5, 19)
    assert view.pointer == array.pointer + 5 * 2 * 64 * 2  # base + offset, no copy
    assert np.array_equal(view.numpy(), host[:, 5:19])
    zeros = backend.zeros((1, 8, 2, 64), np.float32)
    assert zeros.numpy().shape == (1, 8, 2, 64) and not zeros.numpy().any()


@pytest.mark.slow
def test_embedded_model_answers_with_the_cpu_tokens(tmp_path: Path) -> None:
    _cuda_backend()
    pytest.importorskip("torch", reason="exporting the embedded model needs torch")
    from crosslmm_edge.calibration.world.evaluate import write_scene_video
    from crosslmm_edge.demo import embedded_package
    from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
    from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions

    package = embedded_package(log=lambda message: None)
    video = tmp_path / "scene.mp4"
    questions = write_scene_video(video, 3, 0, 8)
    tokens = {}
    for provider in ("cpu", "cuda"):
        assistant = RuntimeAssistant(package, provider=provider, precision="fp32")
        assert assistant.pipeline.backend.device == provider  # no silent CPU fallback
        assistant.set_video(str(video))
        options = GenerationOptions(max_new_tokens=8)
        tokens[provider] = [assistant.ask(q.question, options).token_ids for q in questions]
    assert tokens["cuda"] == tokens["cpu"]


def test_cuda_libraries_load_without_touching_stdout() -> None:
    class FakeOrt:  # a GPU build's preload_dlls prints what it could not load
        calls = 0

        def preload_dlls(self) -> None:
            FakeOrt.calls += 1
            print("Failed to load libcudnn.so.9")

    captured = io.StringIO()
    with redirect_stdout(captured):
        load_cuda_libraries(FakeOrt())
        load_cuda_libraries(object())  # onnxruntime < 1.21: nothing to call
    assert FakeOrt.calls == 1 and captured.getvalue() == ""
