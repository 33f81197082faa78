"""`build` and `ask --backend tensorrt` end to end, on test doubles of TensorRT and CUDA.

The fake engines run the fp16 ONNX graphs in ONNX Runtime at the addresses
the backend binds, enforcing TensorRT's rules (tests/fake_trt), so these
tests exercise the builder's and the backend's whole control flow; real
engines are tested in tests/test_trt_real.py where TensorRT exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_trt import install, set_version
from tiny_models import write_test_video

from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.backends import trt_backend
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.inference.pipeline import Pipeline
from crosslmm_edge.runtime.package.manifest import load_manifest

QUESTION = "what colour is the small dot?"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """The embedded model exported in fp16 (no engines yet), and a short video."""
    root = tmp_path_factory.mktemp("trt")
    package = root / "pkg"
    assert (
        main(["export", str(embedded_model_dir()), "--out", str(package), "--dtype", "fp16"]) == 0
    )
    return package, write_test_video(root / "clip.mp4", frames=8, size=32)


@pytest.fixture
def package(exported, tmp_path) -> Path:
    """A fresh copy of the exported package per test (build adds files to it)."""
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(exported[0], copy)
    return copy


def _ask(capsys, package: Path, video: Path, *extra: str) -> list[int]:
    """Token ids of two questions; sampled with a seed so that many decode steps run."""
    args = ["ask", str(package), "--video", str(video), "--question", QUESTION, "--json"]
    args += ["--question", "which shape is moving?", "--temperature", "1.5", "--seed", "3"]
    assert main([*args, "--max-new-tokens", "12", "--precision", "fp16", *extra]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    return [token for answer in answers for token in answer["token_ids"]]


def test_build_then_ask_gives_the_onnx_runtime_tokens(package, exported, monkeypatch, capsys):
    install(monkeypatch)
    assert main(["build", str(package), "--timing-cache", str(package.parent / "t.cache")]) == 0
    manifest = load_manifest(package)
    assert "tensorrt/fp16" in manifest.labels()
    record = manifest.graphs["llm"].find("tensorrt", "fp16").build
    assert record["tensorrt"] == "10.3.0.30" and record["strongly_typed"] is True
    assert [p["name"] for p in record["profiles"]] == ["decode", "text", "visual"]
    assert {io["name"]: io["dtype"] for io in record["io"]}["logits"] == "float32"
    assert (package.parent / "t.cache").is_file()
    capsys.readouterr()
    reference = _ask(capsys, package, exported[1], "--provider", "cpu")
    assert _ask(capsys, package, exported[1], "--backend", "tensorrt") == reference
    assert reference  # the embedded model answers in one word; see the 24-step test below


def _decode_tokens(package: Path, backend: str, steps: int = 24) -> list[int]:
    """Video prefix, then ``steps`` greedy tokens with no stop: prefill and many decodes."""
    import numpy as np

    from crosslmm_edge.runtime.inference.sampling import Sampler

    pipeline = Pipeline(package, provider="cpu", backend=backend, precision="fp16")
    pixels = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    _, embeds, cross = pipeline.encode([pixels])
    cache = pipeline.new_cache(128)
    pipeline.prefill(
        cache, [1, 5, 9], pipeline.upload(embeds), {k: pipeline.upload(v) for k, v in cross.items()}
    )
    text_cross = {k: pipeline.upload(v) for k, v in cross.items() if k.startswith("t2v")}
    text_cross.update({k: pipeline.shapes.no_memory() for k in cross if k.startswith("v2v")})
    stream = pipeline.generate(cache, text_cross, [7, 8], Sampler(), steps, stop_ids=[])
    return [token for token, _ in stream]


def test_many_decode_steps_equal_onnx_runtime(package, monkeypatch):
    install(monkeypatch)
    assert main(["build", str(package)]) == 0
    tokens = _decode_tokens(package, "tensorrt")
    assert len(tokens) == 24 and tokens == _decode_tokens(package, "onnx")


def test_misaligned_rows_are_caught_by_the_double(package, exported, monkeypatch, capsys):
    """fp16 KV rows of the embedded model are 128 bytes: in place at odd positions is misaligned."""
    install(monkeypatch)
    assert main(["build", str(package)]) == 0
    monkeypatch.setattr(trt_backend, "is_aligned", lambda pointer: True)  # a broken backend
    with pytest.raises(RuntimeError, match="refused the address of present_key"):
        _decode_tokens(package, "tensorrt")


def test_shape_outside_the_profiles_is_refused_before_running(package, monkeypatch):
    install(monkeypatch)
    assert main(["build", str(package), "--max-context", "200"]) == 0
    pipeline = Pipeline(package, backend="tensorrt", precision="fp16")
    cache = pipeline.new_cache(400)
    llm_inputs = pipeline.sessions["llm"].inputs
    empty = {n: pipeline.shapes.no_memory() for n in llm_inputs if n[:4] in ("t2v_", "v2v_")}
    with pytest.raises(UserError, match=r"text: input_ids dimension 1 is 300, not in 1\.\.200"):
        pipeline.prefill(cache, [5] * 300, pipeline.shapes.no_visual(), empty)


@pytest.mark.parametrize("change", ["gpu", "version"])
def test_engine_for_another_gpu_or_tensorrt_is_refused(package, monkeypatch, capsys, change):
    device, trt = install(monkeypatch)
    assert main(["build", str(package)]) == 0
    if change == "gpu":
        device.name, device.minor = "Fake Orin Nano", 2
    else:
        set_version(trt, "10.7.0.23")
    with pytest.raises(UserError, match="rebuild for"):
        Pipeline(package, backend="tensorrt", precision="fp16")


def test_tampered_plan_is_refused(package, monkeypatch):
    install(monkeypatch)
    assert main(["build", str(package)]) == 0
    plan = package / "llm.fp16.plan"
    plan.write_bytes(plan.read_bytes() + b" ")  # still a plan the double would load
    with pytest.raises(UserError, match="does not match the sha256"):
        Pipeline(package, backend="tensorrt", precision="fp16", verify_hashes=False)


def test_build_out_of_memory_names_the_setting(package, monkeypatch, capsys):
    _, trt = install(monkeypatch)
    trt.state.oom = True
    assert main(["build", str(package), "--workspace-mb", "64"]) == 2
    err = capsys.readouterr().err
    assert "lower --workspace-mb (now 64)" in err and "out of memory" in err
    assert "tensorrt/fp16" not in load_manifest(package).labels()
    assert not list(package.glob("*.plan")) and not list(package.glob(".build-*"))


def test_int8_without_an_fp16_based_int8_graph_is_refused(package, monkeypatch, capsys):
    install(monkeypatch)
    assert main(["build", str(package), "--precision", "int8"]) == 2
    assert "no int8 ONNX graph" in capsys.readouterr().err


def test_ask_on_engines_without_tensorrt_is_one_error_line(exported, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    args = ["ask", str(exported[0]), "--video", str(exported[1]), "--question", QUESTION]
    assert main([*args, "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tensorrt'" in err[0]


def test_visual_profile_is_sized_to_the_runtime_pieces(tmp_path, monkeypatch):
    """A 100-frame export: the engine's visual profile holds the largest prefill piece (fewer
    frames than the video), and a whole 100-frame prefill runs through it in pieces."""
    import numpy as np

    from crosslmm_edge.runtime.inference.generation import largest_visual_piece

    package = tmp_path / "pkg"
    export = ["export", str(embedded_model_dir()), "--out", str(package), "--dtype", "fp16"]
    assert main([*export, "--max-frames", "100", "--max-context", "512"]) == 0
    install(monkeypatch)
    assert main(["build", str(package)]) == 0
    pipeline = Pipeline(package, backend="tensorrt", precision="fp16")
    d = pipeline.dims
    piece = largest_visual_piece(
        d.num_heads, d.tokens_per_frame, d.patches_per_frame, 100, d.v2v_scope == "frame"
    )
    record = load_manifest(package).graphs["llm"].find("tensorrt", "fp16").build
    visual = next(p for p in record["profiles"] if p["name"] == "visual")["inputs"]
    assert visual["visual_embeds"]["max"][1] == piece < 100 * d.tokens_per_frame
    size = d.image_size
    pixels = np.random.default_rng(0).standard_normal((100, 3, size, size)).astype(np.float16)
    _, embeds, cross = pipeline.encode([pixels])
    cache = pipeline.new_cache(512)
    logits = pipeline.prefill(cache, [1, 2, 3], embeds, cross)
    assert cache.length == 3 + 100 * d.tokens_per_frame and np.isfinite(np.asarray(logits)).all()
