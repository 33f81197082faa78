"""Manifest v2: several artifacts per role, chosen per run, named in --json, keying states.

One random checkpoint is exported to fp32, then fp16 is added to the same
package with ``export --add``; the fp32 video state saved before the add must
stay valid after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import save_tiny_checkpoint, tiny_config, write_test_video

from crosslmm_edge.cli import main
from crosslmm_edge.runtime.package.manifest import load_manifest

QUESTION = "What colour is the small dot?"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    checkpoint = save_tiny_checkpoint(root / "ck", tiny_config(num_frames=3), seed=2)
    video = write_test_video(root / "v.mp4", frames=5)
    package = root / "pkg"
    assert main(["export", str(checkpoint), "--out", str(package)]) == 0
    state = root / "fp32.state.npz"
    ask = ["ask", str(package), "--video", str(video), "--question", QUESTION, "--json"]
    assert main([*ask, "--save-video-state", str(state)]) == 0
    assert main(["export", str(checkpoint), "--out", str(package), "--add", "--dtype", "fp16"]) == 0
    return {"checkpoint": checkpoint, "video": video, "package": package, "state": state}


def _ask(capsys, setup, *extra: str) -> tuple[int, dict | str]:
    args = ["ask", str(setup["package"]), "--video", str(setup["video"]), "--json"]
    code = main([*args, "--question", QUESTION, *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.err


def test_the_package_holds_both_precisions(setup):
    manifest = load_manifest(setup["package"])
    assert manifest.labels() == ["onnx/fp16", "onnx/fp32"]
    llm16 = manifest.graphs["llm"].find("onnx", "fp16")
    assert llm16.file == "llm.fp16.onnx"
    dtypes = {t.name: t.dtype for t in llm16.inputs}
    assert dtypes["past_key.0"] == "float16" and dtypes["input_ids"] == "int64"
    assert {t.name: t.dtype for t in llm16.outputs}["logits"] == "float32"


def test_precision_chooses_the_artifacts_and_json_names_them(capsys, setup):
    code, out = _ask(capsys, setup, "--precision", "fp16")
    assert code == 0
    assert {(a["role"], a["precision"], a["file"]) for a in out["artifacts"]} == {
        ("vision_encoder", "fp16", "vision_encoder.fp16.onnx"),
        ("pooling", "fp16", "pooling.fp16.onnx"),
        ("llm", "fp16", "llm.fp16.onnx"),
    }
    code, out = _ask(capsys, setup)  # default on a CPU: fp32
    assert {a["precision"] for a in out["artifacts"]} == {"fp32"}


def test_a_precision_the_package_lacks_lists_what_it_holds(capsys, setup):
    code, err = _ask(capsys, setup, "--precision", "int8")
    assert code == 2 and err.count("\n") == 1
    assert "onnx/int8" in err and "onnx/fp16, onnx/fp32" in err


def test_states_are_keyed_by_the_artifacts_that_ran(capsys, setup):
    state = str(setup["state"])
    # Saved under fp32 before fp16 was added: still valid for fp32.
    code, out = _ask(capsys, setup, "--video-state", state, "--precision", "fp32")
    assert code == 0 and out["answers"][0]["video_prefix_reused"] is True
    code, err = _ask(capsys, setup, "--video-state", state, "--precision", "fp16")
    assert code == 2 and "onnx/fp32" in err and "onnx/fp16" in err


def test_seeded_sampling_draws_the_same_tokens_on_checkpoint_and_package(capsys, setup):
    sampling = ["--temperature", "0.8", "--seed", "3", "--max-new-tokens", "24"]
    tokens = []
    for model in (setup["checkpoint"], setup["package"]):
        args = ["ask", str(model), "--video", str(setup["video"]), "--json", *sampling]
        assert main([*args, "--question", QUESTION]) == 0
        tokens.append(json.loads(capsys.readouterr().out)["answers"][0]["token_ids"])
    assert len(tokens[0]) == 24 and tokens[0] == tokens[1]
    # A different seed draws differently: the test would notice a sampler that ignores it.
    args = ["ask", str(setup["package"]), "--video", str(setup["video"]), "--json"]
    other = [*sampling[:2], "--seed", "4", *sampling[4:]]
    assert main([*args, *other, "--question", QUESTION]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["token_ids"] != tokens[0]


def test_adding_a_precision_twice_is_refused(capsys, setup):
    args = ["export", str(setup["checkpoint"]), "--out", str(setup["package"]), "--add"]
    assert main([*args, "--dtype", "fp16"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert load_manifest(setup["package"]).labels() == ["onnx/fp16", "onnx/fp32"]


def test_verify_runs_every_precision_through_the_runtime(capsys, setup):
    assert main(["verify", str(setup["package"])]) == 0
    out = capsys.readouterr().out
    assert "-- onnx/fp32" in out and "-- onnx/fp16" in out and out.count("chain ") == 2
