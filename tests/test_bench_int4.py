"""The ``int4`` bench suite's logic on the embedded model (no onnxruntime-genai here),
the per-step weight bytes counted from a graph, and the ``context`` report fields."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosslmm_edge.benchmarks.graph_bytes import weight_bytes_per_step
from crosslmm_edge.benchmarks.models import BenchModel
from crosslmm_edge.benchmarks.suite_context import context_report, run_context
from crosslmm_edge.benchmarks.suite_int4 import run_int4, summary, weights_alone
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.package.loader import open_package

MACHINE = {"bandwidth_gbs": 10.0}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> BenchModel:
    """The embedded model exported in FP32 (its checkpoint is the source)."""
    if not (embedded_model_dir() / "config.json").is_file():
        pytest.skip("embedded model not installed")
    from crosslmm_edge.export.graphs.package import export_package

    folder = tmp_path_factory.mktemp("int4bench") / "pkg"
    export_package(embedded_model_dir(), folder)
    return BenchModel(folder, embedded_model_dir())


def _args(workdir: Path, genai_python: str | None = None, genai_model: str | None = None):
    return argparse.Namespace(
        threads=1,
        repeats=1,
        new_tokens=4,
        prompt_tokens=5,
        workdir=str(workdir),
        genai_python=genai_python,
        genai_model=genai_model,
    )


def test_without_genai_python_the_genai_leg_is_skipped_and_said(model, tmp_path, capsys):
    out = run_int4(model, _args(tmp_path), MACHINE)
    assert "--genai-python not given" in capsys.readouterr().out
    assert out["genai"].startswith("skipped")
    assert out["genai_int4_tok_s"] is None and out["ours_int4_over_genai"] is None
    assert out["ours_fp32_tok_s"] > 0 and set(out["systems"]) == {"ours_fp32"}
    fp32 = out["systems"]["ours_fp32"]
    assert fp32["ms_per_step"] == pytest.approx(1000 / fp32["tok_s"])
    assert fp32["bandwidth_fraction"] == pytest.approx(
        fp32["tok_s"] * fp32["bytes_per_step"] / 10e9
    )
    frame = open_package(model.package, verify=False).dims.tokens_per_frame
    assert out["settings"] == {
        "threads": 1,
        "prompt_tokens": 5,
        "new_tokens": 4,
        "past_at_middle_step": 4 + frame + 5 + 2,  # video prefix (4 + a frame), prompt, new / 2
    }
    assert out["package_bytes"] > out["llm_bytes"]["fp32"] > 0


def test_the_genai_leg_runs_in_the_given_interpreter(model, tmp_path):
    fake = tmp_path / "python"  # answers like the genai child, whatever it is asked
    fake.write_text('#!/bin/sh\necho \'{"ttft_s": 0.5, "tok_s": 50.0}\'\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    genai_model = tmp_path / "genai"
    genai_model.mkdir()
    onnx.save(_graph(), str(genai_model / "model.onnx"))
    out = run_int4(model, _args(tmp_path, str(fake), str(genai_model)), MACHINE)
    assert out["genai_int4_tok_s"] == 50.0
    assert out["systems"]["genai_int4"]["ttft_s"] == 0.5
    assert out["ours_int4_over_genai"] is None  # the package holds no INT4


def test_summary_ratios_name_their_legs() -> None:
    systems = {
        "ours_int4": {"tok_s": 90.0, "bandwidth_fraction": 0.8},
        "ours_fp32": {"tok_s": 15.0, "bandwidth_fraction": 0.9},
        "genai_int4": {"tok_s": 75.0, "bandwidth_fraction": 0.7},
    }
    out = summary(systems, {"int4": 300, "fp32": 2000})
    assert out["ours_int4_over_genai"] == pytest.approx(1.2)
    assert out["int4_bandwidth_fraction"] == 0.8
    assert out["llm_bytes_int4_over_fp32"] == pytest.approx(0.15)
    assert out["ours_int8_tok_s"] is None


def _graph() -> onnx.ModelProto:
    """Gather-only table [10, 4], a table both gathered and multiplied [10, 4],
    a MatMul weight [4, 3] and a 4-bit weight [8, 4] behind a DequantizeLinear."""
    floats = np.ones((10, 4), np.float32)
    int4 = helper.make_tensor("w4", TensorProto.INT4, [8, 4], [1] * 32)
    inits = [
        numpy_helper.from_array(floats, "rows_only"),
        numpy_helper.from_array(floats, "shared"),
        numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
        int4,
        numpy_helper.from_array(np.ones((1, 4), np.float32), "scale"),
        numpy_helper.from_array(np.ones((2, 2), np.float32), "unused"),
    ]
    nodes = [
        helper.make_node("Gather", ["rows_only", "ids"], ["a"]),
        helper.make_node("Gather", ["shared", "ids"], ["b"]),
        helper.make_node("MatMul", ["a", "shared_t"], ["c"]),
        helper.make_node("Transpose", ["shared"], ["shared_t"]),
        helper.make_node("MatMul", ["b", "w"], ["d"]),
        helper.make_node("DequantizeLinear", ["w4", "scale"], ["w4f"], axis=0),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "cd"]
    outputs.append(helper.make_tensor_value_info("w4f", TensorProto.FLOAT, None))
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits))


def test_weight_bytes_count_a_gathered_table_as_one_row(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    onnx.save(_graph(), str(path))
    bytes_ = weight_bytes_per_step(path)
    # rows_only: one row (16); shared: whole (160); w: 48; w4: 32 nibbles (16); scale: 16
    assert bytes_["read"] == 16 + 160 + 48 + 16 + 16
    assert bytes_["stored"] == 160 + 160 + 48 + 16 + 16 + 16


def test_context_report_compares_growth_with_the_bytes() -> None:
    ms = {128: 40.0, 4086: 60.0}
    read = {128: 1_000_000_000, 4086: 1_100_000_000}
    out = context_report(ms, read, bandwidth=25e9)
    assert out["ratio_4086_over_128"] == pytest.approx(1.5)
    assert out["predicted_ratio"] == pytest.approx(1.1)
    assert out["ratio_over_prediction"] == pytest.approx(1.5 / 1.1)
    assert out["last_over_limit"] == pytest.approx(60.0 / 44.0)
    assert out["kv_read_gbs"] == pytest.approx(0.1e9 / 0.020 / 1e9)


def test_context_reports_every_onnx_precision_the_package_holds(model, tmp_path) -> None:
    args = argparse.Namespace(threads=1, repeats=1, context_steps=2)
    out = run_context(model, args, MACHINE)
    assert set(out) == {"fp32"}  # the fixture holds fp32 only
    report = out["fp32"]
    first, last = min(report["ms_per_token"]), max(report["ms_per_token"])
    assert report["bytes_per_token"][last] > report["bytes_per_token"][first]
    assert report[f"ratio_{last}_over_{first}"] > 0 and report["predicted_ratio"] > 1


def test_the_kernel_rate_benchmark_times_the_products_it_counts() -> None:
    """Its sessions compute x @ W for every counted weight, and the bytes it divides by
    are the 4-bit values plus float32 scales of exactly those weights."""
    import onnxruntime  # noqa: F401  (the benchmark's sessions)

    from crosslmm_edge.benchmarks import int4_kernel_rate as rate

    shapes = rate.layer_shapes(hidden=64, intermediate=96, heads=4, kv_heads=2)
    assert shapes == [(64, 128), (64, 64), (64, 192), (96, 64)]
    session, nbytes = rate.weight_session(shapes, layers=2, block_size=32, threads=1)
    blocks = sum(-(-k // 32) * n for k, n in shapes)
    assert nbytes == 2 * (sum(k * n for k, n in shapes) // 2 + 4 * blocks)
    x = {f"x{k}": np.ones((1, k), np.float32) for k in (64, 96)}
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, x), strict=True))
    assert len(outputs) == 8 and outputs["y1_3"].shape == (1, 64)
    assert all(np.isfinite(y).all() and np.abs(y).max() > 0 for y in outputs.values())
    args = argparse.Namespace(
        hidden=64,
        intermediate=96,
        heads=4,
        kv_heads=2,
        layers=2,
        block_sizes=[32, 64],
        repeats=1,
        threads=1,
    )
    result = rate.measure(args)
    assert set(result) == {32, 64} and result[64]["weight_mb"] < result[32]["weight_mb"]
    assert all(row["gbs_streamed"] > 0 and row["gbs_resident"] > 0 for row in result.values())


def test_the_weights_alone_are_the_packages_decoder_in_its_block_size(model) -> None:
    """The suite times the INT4 decoder's products at the package's shape and block size,
    and divides their bytes by the same probe as the step's fraction."""
    from types import SimpleNamespace

    from crosslmm_edge.benchmarks.int4_kernel_rate import layer_shapes

    package = open_package(model.package, verify=False)
    text = package.config.text_config
    artifact = SimpleNamespace(build={"block_size": 16})
    out = weights_alone(package, artifact, threads=1, machine=MACHINE, repeats=1)
    shapes = layer_shapes(
        text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads
    )
    per_layer = sum(k * n // 2 + 4 * (-(-k // 16)) * n for k, n in shapes)  # nibbles, scales
    assert out["block_size"] == 16
    assert out["weight_bytes"] == text.num_hidden_layers * per_layer
    assert out["gbs"] > 0 and out["resident_gbs"] > 0
    assert out["fraction_of_probe"] == pytest.approx(out["gbs"] / MACHINE["bandwidth_gbs"])
