"""INT4 building blocks without a model: block quantization, AWQ folding, the streamed
statistics, lint-trt's block rules, calibration frames and a full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosslmm_edge.calibration.collect.activation_stats import RESERVOIR_ROWS, TensorStats
from crosslmm_edge.calibration.int4.awq import apply_factors
from crosslmm_edge.calibration.int4.block_quant import BlockScheme, dequantize_node, quantize_weight
from crosslmm_edge.calibration.int4.quantize_int4 import block_quantize_model
from crosslmm_edge.export.tensorrt.lint_trt import lint_model


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [32, 64, 128])
def test_rounding_error_stays_within_half_a_step(symmetric: bool, block: int) -> None:
    weight = np.random.default_rng(block).standard_normal((256, 48)).astype(np.float32)
    scheme = BlockScheme(4, block, symmetric)
    quantized = quantize_weight(weight, scheme)
    low, high = scheme.levels
    assert quantized.values.min() >= low and quantized.values.max() <= high
    step = np.repeat(quantized.scales, block, axis=0)
    assert np.all(np.abs(quantized.dequantize(block) - weight) <= step / 2 + 1e-6)


def _matmul_graph(weight: np.ndarray, scheme: BlockScheme, dtype=np.float32) -> onnx.ModelProto:
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    tensors, dq, output = dequantize_node("w", quantize_weight(weight, scheme), scheme, dtype)
    graph = helper.make_graph(
        [dq, helper.make_node("MatMul", ["x", output], ["y"], "mm")],
        "g",
        [helper.make_tensor_value_info("x", kind, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", kind, [1, weight.shape[1]])],
        tensors,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("symmetric", [True, False])
def test_onnx_dequantizes_the_packed_blocks_as_we_do(symmetric: bool) -> None:
    """The int4 packing and blocked layout read back by ONNX's reference and by ORT."""
    from onnx.reference import ReferenceEvaluator

    weight = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)
    scheme = BlockScheme(4, 32, symmetric)
    model = _matmul_graph(weight, scheme)
    onnx.checker.check_model(model)
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    expected = x @ quantize_weight(weight, scheme).dequantize(32)
    (reference,) = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-5)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # ORT fuses DQ + MatMul into MatMulNBits, which quantizes x to int8 per block
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=0.05, atol=0.05)


def test_one_block_over_k_is_written_per_channel() -> None:
    weight = np.random.default_rng(3).standard_normal((64, 8)).astype(np.float32)
    _, node, _ = dequantize_node(
        "w", quantize_weight(weight, BlockScheme(8, 64)), BlockScheme(8, 64), np.float16
    )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"axis": 1}


def _norm_graph() -> onnx.ModelProto:
    """x -> Mul(gamma) -> two MatMuls (q, k); x -> MatMul(o) and a residual Add; gamma is
    also read by another Mul."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 2, 64).astype(np.float32), "gamma"),
        *(
            numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), n)
            for n in "qko"
        ),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["normed"], "norm"),
        helper.make_node("MatMul", ["normed", "q"], ["yq"], "mq"),
        helper.make_node("MatMul", ["normed", "k"], ["yk"], "mk"),
        helper.make_node("MatMul", ["x", "o"], ["yo"], "mo"),
        helper.make_node("Add", ["x", "x"], ["residual"], "add"),
        helper.make_node("Mul", ["x", "gamma"], ["shared"], "shares_gamma"),  # as the export does
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
        for n in ("yq", "yk", "yo", "residual", "shared")
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_awq_factors_fold_without_changing_the_function() -> None:
    """Folded into the norm where only scaled MatMuls read it, a Mul where x has other readers."""
    model, x = _norm_graph(), np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    before = _run(model, x)
    rng = np.random.default_rng(6)
    s_norm, s_x = (
        rng.uniform(0.25, 4, 64).astype(np.float32),
        rng.uniform(0.25, 4, 64).astype(np.float32),
    )
    transform = apply_factors(model, {"mq": s_norm, "mk": s_norm, "mo": s_x}, np.dtype(np.float32))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            weight = numpy_helper.to_array(inits[node.input[1]])
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array(transform(node, weight), node.input[1])
            )
    ops = [n.op_type for n in model.graph.node]
    # the norm (folded into a private copy of the shared gamma), the other reader of
    # gamma, and one Mul inserted for x, which Add also reads
    assert ops.count("Mul") == 3
    for got, want in zip(_run(model, x), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _gated_mlp_graph() -> onnx.ModelProto:
    """x @ [gate ; up] -> Split -> silu(gate) · up -> @ down, as the fused export has it."""
    rng = np.random.default_rng(8)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 2 * 96)).astype(np.float32), "gate_up"),
        numpy_helper.from_array(np.array([96, 96], np.int64), "sizes"),
        numpy_helper.from_array(rng.standard_normal((96, 64)).astype(np.float32), "down"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "gate_up"], ["gu"], "mgu"),
        helper.make_node("Split", ["gu", "sizes"], ["g", "u"], "split", axis=-1),
        helper.make_node("Sigmoid", ["g"], ["sg"], "sigmoid"),
        helper.make_node("Mul", ["g", "sg"], ["silu"], "silu"),
        helper.make_node("Mul", ["silu", "u"], ["h"], "gated"),
        helper.make_node("MatMul", ["h", "down"], ["y"], "mdown"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_down_projection_factors_fold_into_the_up_columns() -> None:
    """silu(gate) · up / s == silu(gate) · (up / s): no Mul is inserted before down_proj."""
    model, x = _gated_mlp_graph(), np.random.default_rng(9).standard_normal((3, 64))
    x = x.astype(np.float32)
    before = _run(model, x)
    gate_before = numpy_helper.to_array(model.graph.initializer[0])[:, :96].copy()
    s = np.random.default_rng(10).uniform(0.25, 4, 96).astype(np.float32)
    transform = apply_factors(model, {"mdown": s}, np.dtype(np.float32))
    inits = {t.name: t for t in model.graph.initializer}
    down = numpy_helper.to_array(inits["down"])
    inits["down"].CopyFrom(numpy_helper.from_array(transform(model.graph.node[-1], down), "down"))
    assert [n.op_type for n in model.graph.node].count("Mul") == 2  # silu's and the gate's
    np.testing.assert_array_equal(numpy_helper.to_array(inits["gate_up"])[:, :96], gate_before)
    np.testing.assert_allclose(_run(model, x)[0], before[0], rtol=1e-4, atol=1e-4)


def test_block_quantized_graph_runs_and_lints_clean() -> None:
    model = _norm_graph()
    block_quantize_model(
        model, {"mq": BlockScheme(4, 32), "mk": BlockScheme(4, 32)}, np.dtype(np.float32)
    )
    assert [o.version for o in model.opset_import if o.domain == ""] == [21]
    assert lint_model(model, "g") == []
    _run(model, np.ones((3, 64), np.float32))


@pytest.mark.parametrize(
    ("scheme", "message"),
    [(BlockScheme(4, 32, symmetric=False), "zero point"), (BlockScheme(8, 32), "only INT4")],
)
def test_lint_trt_refuses_what_tensorrt_does_not_block(scheme: BlockScheme, message: str) -> None:
    weight = np.random.default_rng(7).standard_normal((64, 8)).astype(np.float32)
    problems = lint_model(_matmul_graph(weight, scheme), "g")
    assert problems and any(message in p.message or "dtype" in p.message for p in problems), (
        problems
    )


def test_lint_trt_wants_a_blocked_weight_to_feed_matmul() -> None:
    model = _matmul_graph(np.ones((64, 8), np.float32), BlockScheme(4, 32))
    model.graph.node[1].op_type = "Add"  # the dequantized weight now feeds an Add
    model.graph.node[1].input[:] = [model.graph.node[1].input[1], model.graph.node[1].input[1]]
    assert any("MatMul" in p.message for p in lint_model(model, "g"))


def test_streamed_statistics_match_the_whole_and_the_reservoir_stays_bounded() -> None:
    rng = np.random.default_rng(8)
    runs = [
        rng.standard_normal((1, n, 16)).astype(np.float32) * (1 + n % 3) for n in (5, 300, 0, 40)
    ]
    stats = TensorStats()
    for run in runs:
        stats.add(run, rng)
    rows = np.concatenate([r.reshape(-1, 16) for r in runs])
    assert stats.rows == len(rows) and stats.reservoir.shape == (RESERVOIR_ROWS, 16)
    assert stats.low == rows.min() and stats.high == rows.max()
    np.testing.assert_allclose(stats.mean_abs, np.abs(rows).mean(axis=0), rtol=1e-5)
    sampled = {row.tobytes() for row in stats.reservoir}
    assert sampled <= {row.tobytes() for row in rows}


def test_calibration_frames_default_to_the_package_limit() -> None:
    from types import SimpleNamespace

    from crosslmm_edge.calibration.collect.calibrate import calibration_frames
    from crosslmm_edge.runtime.errors import UserError

    manifest = SimpleNamespace(limits={"max_frames": 8}, model_config={"num_frames": 64})
    assert calibration_frames(manifest, Path("pkg"), None) == 8
    assert calibration_frames(manifest, Path("pkg"), 4) == 4
    with pytest.raises(UserError, match="1 to 8"):
        calibration_frames(manifest, Path("pkg"), 64)


def test_a_full_disk_names_the_folder() -> None:
    from crosslmm_edge.calibration.collect.calibrate import disk_error

    error = disk_error(OSError(errno.ENOSPC, "No space left on device"), Path("/scratch/q"), "temp")
    assert "/scratch/q" in str(error) and "no space left" in str(error)


def test_tracking_graphs_link_the_weights_and_leave_no_link_behind(tmp_path: Path) -> None:
    """The tracking copy shares the weights (no copy); once removed, onnx loads the source
    again (it refuses external data with several hard links)."""
    from crosslmm_edge.calibration.collect.activation_stats import (
        remove_tracking_graphs,
        write_tracking_graph,
    )

    source = tmp_path / "pkg" / "g.onnx"
    source.parent.mkdir()
    onnx.save(_norm_graph(), str(source), save_as_external_data=True, size_threshold=0)
    data = source.with_name(next(p.name for p in source.parent.iterdir() if p != source))
    folder = tmp_path / "tracking"
    write_tracking_graph(source, folder / "g.onnx", ["normed"])
    assert data.stat().st_nlink == 2
    assert "normed" in [
        o.name for o in onnx.load(str(folder / "g.onnx"), load_external_data=False).graph.output
    ]
    remove_tracking_graphs(folder)
    assert data.stat().st_nlink == 1 and not folder.exists()
    assert len(onnx.load(str(source)).graph.initializer) == 4


def test_a_tied_head_gets_its_own_quantized_weight() -> None:
    """The export reads a tied head as MatMul(x, Transpose(embedding)); --head quantizes a
    copy and leaves the embedding's Gather on the float table."""
    from crosslmm_edge.calibration.int4.quantize_int4 import head_matmul, untie_head
    from crosslmm_edge.export.graphs.graph_passes import NAME_SCOPES

    table = np.random.default_rng(9).standard_normal((40, 64)).astype(np.float32)
    head = helper.make_node("MatMul", ["x", "table_t"], ["logits"], "head")
    head.metadata_props.add(key=NAME_SCOPES, value="['model', 'linear']")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embeds"], "embed"),
        helper.make_node("Transpose", ["table"], ["table_t"], "tie", perm=[1, 0]),
        head,
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("embeds", "logits")],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    x = np.random.default_rng(10).standard_normal((1, 64)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "ids": [3]})
    found = head_matmul(model)
    assert found is not None and found.name == "head"
    untie_head(model, found)
    block_quantize_model(model, {"head": BlockScheme(8, 32)}, np.dtype(np.float32))
    assert "Transpose" not in [n.op_type for n in model.graph.node]
    embeds, logits = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "ids": [3]})
    np.testing.assert_array_equal(embeds, before[0])
    assert np.linalg.norm(logits - before[1]) < 0.02 * np.linalg.norm(before[1])


def test_a_graph_left_float_keeps_its_external_weights(tmp_path: Path) -> None:
    """A graph the recipe leaves float (the 2B shape's vision encoder, weights beside it)
    is copied with its weights in ``<graph>.data``, the file its artifact lists; before,
    onnx named them at random and the package lost them."""
    from crosslmm_edge.calibration.int8.quantize import quantize_graph
    from crosslmm_edge.runtime.package.onnx_refs import external_data_locations

    weight = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], "proj")],
        "float_graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(weight, "w")],
    )
    source = tmp_path / "pkg" / "vision_encoder.onnx"
    source.parent.mkdir()
    data_name = source.name + ".data"
    onnx.save(helper.make_model(graph), str(source), save_as_external_data=True, location=data_name)
    target = tmp_path / "staging" / "vision_encoder.int4.onnx"
    target.parent.mkdir()
    quantize_graph(source, target, [], None, "vision_encoder")  # type: ignore[arg-type]
    assert external_data_locations(target) == {target.name + ".data"}
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".data"]
    stored = onnx.load(str(target)).graph.initializer[0]
    np.testing.assert_array_equal(numpy_helper.to_array(stored), weight)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_the_quantized_embedding_gives_back_its_rows(bits: int, symmetric: bool) -> None:
    """`--asymmetric` applies to weights; the table's blocks stay symmetric, which both of
    its stored forms assume (an asymmetric table was read as noise)."""
    from crosslmm_edge.calibration.int4.embedding_quant import quantize_embedding
    from crosslmm_edge.export.graphs.graph_passes import NAME_SCOPES

    table = np.random.default_rng(11).standard_normal((50, 64)).astype(np.float32)
    gather = helper.make_node("Gather", ["table", "ids"], ["embeds"], "embed")
    gather.metadata_props.add(key=NAME_SCOPES, value="['model', 'model.embed_tokens', 'emb']")
    graph = helper.make_graph(
        [gather],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    quantize_embedding(model, BlockScheme(bits, 32, symmetric))
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized"]
    ids = np.array([[0, 7, 49]], np.int64)
    (embeds,) = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})
    step = np.abs(table).max() / (7 if bits == 4 else 127)
    assert np.abs(embeds[0] - table[ids[0]]).max() <= step / 2 + 1e-6


def test_the_head_block_size_is_checked_and_kept_apart_from_the_weights() -> None:
    from crosslmm_edge.calibration.int4.options import Int4Options
    from crosslmm_edge.runtime.errors import UserError

    options = Int4Options(block_size=64, head="int8", head_block_size=128)
    assert (options.scheme(4).block_size, options.head_scheme().block_size) == (64, 128)
    assert options.head_scheme().bits == 8
    with pytest.raises(UserError, match="--head-block-size 48"):
        Int4Options(head_block_size=48).check()
