"""Real TensorRT engines: `build` and `ask --backend tensorrt` vs ONNX Runtime.

Skipped where TensorRT (and a GPU) are not installed; the same flow runs on
test doubles in tests/test_trt_fake_backend.py.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from tiny_models import write_test_video

from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="TensorRT not installed"
)


def _tokens(capsys, package, video, *extra) -> list[int]:
    args = [
        "ask",
        str(package),
        "--video",
        str(video),
        "--question",
        "what colour is the small dot?",
    ]
    assert main([*args, "--json", "--precision", "fp16", *extra]) == 0
    return json.loads(capsys.readouterr().out)["answers"][0]["token_ids"]


def test_real_engines_answer_like_onnx_runtime(tmp_path, capsys):
    package = tmp_path / "pkg"
    assert (
        main(["export", str(embedded_model_dir()), "--out", str(package), "--dtype", "fp16"]) == 0
    )
    assert main(["build", str(package), "--workspace-mb", "256"]) == 0
    video = write_test_video(tmp_path / "clip.mp4", frames=8, size=32)
    capsys.readouterr()
    reference = _tokens(capsys, package, video, "--provider", "cpu")
    assert _tokens(capsys, package, video, "--backend", "tensorrt") == reference
