"""``crosslmm-edge verify``: passes on a faithful package, fails on a tampered one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_models import save_tiny_checkpoint, tiny_config

from crosslmm_edge.cli import main
from crosslmm_edge.export.graphs.package import export_package
from crosslmm_edge.runtime.package.files import file_sha256


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    config = tiny_config(layers=2, dcal_every=2, num_frames=2)
    checkpoint = save_tiny_checkpoint(root / "ckpt", config)
    export_package(checkpoint, root / "pkg", max_context=48)
    return checkpoint, root / "pkg"


def _copy(pkg: Path, where: Path) -> Path:
    return Path(shutil.copytree(pkg, where / "pkg"))


def _tamper(pkg: Path) -> None:
    """Nudge one LLM weight by 0.05 and re-hash, as a subtly wrong exporter would."""
    path = pkg / "llm.onnx"
    model = onnx.load(str(path))
    fused_bias = "layers.0.self_attn.q_k_v_proj.bias"  # q, k, v biases in one (graph_passes)
    weight = next(i for i in model.graph.initializer if fused_bias in i.name)
    values = numpy_helper.to_array(weight) + np.float32(0.05)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(path))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["graphs"]["llm"]["artifacts"][0]["sha256"] = file_sha256(path)
    (pkg / "manifest.json").write_text(json.dumps(manifest))


def test_verify_passes_and_prints_every_output(exported, capsys):
    _, pkg = exported
    assert main(["verify", str(pkg)]) == 0
    out = capsys.readouterr().out
    for case in ("frames=1", "frames=2", "text=1,frames=0,past=0", "text=4,frames=0,past=6"):
        assert case in out
    assert "present_value.1" in out and "v2v_key.0" in out and "patch_features" in out
    assert "FAIL" not in out and out.strip().splitlines()[-1].startswith("PASS")


def test_verify_fails_on_a_tampered_graph(exported, tmp_path, capsys):
    _, pkg = exported
    bad = _copy(pkg, tmp_path)
    _tamper(bad)
    assert main(["verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and out.strip().splitlines()[-1].startswith("FAIL")
    assert not any(
        line.startswith("vision_encoder") and "FAIL" in line for line in out.splitlines()
    )


def test_verify_refuses_a_changed_file(exported, tmp_path, capsys):
    _, pkg = exported
    bad = _copy(pkg, tmp_path)
    with open(bad / "pooling.onnx", "ab") as handle:
        handle.write(b"\0")
    assert main(["verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pooling.onnx" in err and "sha256" in err


def test_verify_needs_the_checkpoint_when_the_source_is_gone(exported, tmp_path, capsys):
    checkpoint, pkg = exported
    moved = Path(shutil.copytree(checkpoint, tmp_path / "moved"))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(tmp_path / "gone")
    copy = _copy(pkg, tmp_path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(copy)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["verify", str(copy), "--checkpoint", str(moved), "--seed", "3"]) == 0


def test_verify_refuses_another_checkpoint(exported, tmp_path, capsys):
    _, pkg = exported
    other = save_tiny_checkpoint(tmp_path / "other", tiny_config(layers=2, dcal_every=2), seed=5)
    assert main(["verify", str(pkg), "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(other) in err and "hash" in err


def test_compare_reports_error_and_cosine():
    from crosslmm_edge.export.graphs.verify import compare

    ref = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert compare(ref, ref) == (0.0, pytest.approx(1.0))
    max_abs, cosine = compare(ref, -ref)
    assert max_abs == pytest.approx(6.0) and cosine == pytest.approx(-1.0)
    assert compare(np.zeros((1, 0, 2)), np.zeros((1, 0, 2))) == (0.0, 1.0)


def test_an_fp16_package_verifies_within_fp16_tolerance(exported, tmp_path, capsys):
    checkpoint, _ = exported
    assert (
        main(
            [
                "export",
                str(checkpoint),
                "--out",
                str(tmp_path / "pkg16"),
                "--dtype",
                "fp16",
                "--max-context",
                "48",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "pkg16" / "manifest.json").read_text())
    (llm,) = manifest["graphs"]["llm"]["artifacts"]
    assert llm["precision"] == "fp16" and llm["file"] == "llm.fp16.onnx"
    assert llm["inputs"][1]["dtype"] == "float16"
    assert llm["outputs"][0]["dtype"] == "float32"  # logits stay fp32
    assert main(["verify", str(tmp_path / "pkg16")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")
