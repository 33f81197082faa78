"""``quantize --precision int4`` on the embedded model: artifacts, fusion, lint, drift, TensorRT.

One export (fp32 and fp16 graphs, shared with test_quantize) and one quantization (AWQ
and an INT4 embedding, the defaults, with an INT8 LM head in blocks of 64, which
TensorRT's graph stores per channel; two calibration videos) serve every test but the search, which
runs with the defaults.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from crosslmm_edge.calibration.world.evaluate import write_scene_video
from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.package.manifest import load_manifest

pytestmark = pytest.mark.skipif(
    not (embedded_model_dir() / "config.json").is_file(), reason="embedded model not installed"
)


@pytest.fixture(scope="module")
def int4_package(tmp_path_factory: pytest.TempPathFactory, embedded_fp16_package: Path) -> Path:
    """The embedded model (fp32 + fp16 graphs) with onnx/int4 and onnx-trt/int4 added."""
    options = ("--head", "int8", "--head-block-size", "64")
    return _quantized_copy(embedded_fp16_package, tmp_path_factory.mktemp("int4"), *options)


@pytest.fixture(scope="module")
def float32_cache_package(
    tmp_path_factory: pytest.TempPathFactory, embedded_fp16_package: Path
) -> Path:
    """``int4_package``'s options with ``--kv-cache float32`` (the default is float16)."""
    options = ("--head", "int8", "--head-block-size", "64", "--kv-cache", "float32")
    return _quantized_copy(embedded_fp16_package, tmp_path_factory.mktemp("int4f32"), *options)


def _blocked(model: onnx.ModelProto) -> dict[str, int]:
    """Weight name -> bits of every blocked (or per-channel weight) DequantizeLinear."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.INT8: 8}
    return {
        n.input[0]: bits[inits[n.input[0]]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) in bits and "_q" in n.input[0]
    }


def test_int4_set_records_how_it_was_made(int4_package: Path) -> None:
    manifest = load_manifest(int4_package)
    assert {"onnx/int4", "onnx-trt/int4"} <= set(manifest.labels())
    llm = manifest.graphs["llm"].find("onnx", "int4")
    build = llm.build
    assert build["algorithm"] == "awq" and build["block_size"] == 32 and build["symmetric"]
    assert build["lm_head"] == "int8" and build["embedding"] == "int4"
    assert build["lm_head_block_size"] == 64
    assert len(build["calibration_sha256"]) == 64
    assert build["calibration_frames"] == 8 and build["awq_activations"] > 0
    pooling = manifest.graphs["pooling"].find("onnx", "int4")
    assert {t.name: t.dtype for t in pooling.outputs}["t2v_key.0"] == "int8"  # INT8 memory kept
    assert {t.name: t.dtype for t in llm.inputs}["t2v_key.0"] == "float32"  # ... bound dequantized
    heads = manifest.model_config["text_config"]["num_key_value_heads"]
    assert sorted(llm.dequantize_on_bind) == sorted(build["cross_kv_scales"])
    assert {len(s) for s in llm.dequantize_on_bind.values()} == {heads}
    model = onnx.load(str(int4_package / llm.file))
    inputs = {i.name for i in model.graph.input}
    assert not [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inputs
    ]
    assert [o.version for o in model.opset_import if o.domain == ""] == [21]
    blocked = _blocked(model)
    assert sorted(blocked.values()).count(4) == len(build["modules_by_storage"]["int4"]) == 24
    assert list(blocked.values()).count(8) == 1  # the LM head
    block_size_by_bits = {
        blocked[n.input[0]]: a.i
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in blocked
        for a in n.attribute
        if a.name == "block_size"
    }
    assert block_size_by_bits == {4: 32, 8: 64}  # the head has its own block size
    assert "GatherBlockQuantized" in [n.op_type for n in model.graph.node]  # the embedding
    assert build["ort_fusions"]["rotary_embedding"] == 8  # ONNX Runtime-only graph: fused


def test_onnx_runtime_fuses_every_block_into_matmulnbits(int4_package: Path, tmp_path) -> None:
    import onnxruntime as ort

    llm = load_manifest(int4_package).graphs["llm"].find("onnx", "int4")
    expected = len(_blocked(onnx.load(str(int4_package / llm.file))))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int4_package / llm.file), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert expected == 25 and ops.count("MatMulNBits") == expected and "MatMul" not in ops


def test_the_tensorrt_int4_graphs_pass_lint_trt(int4_package: Path) -> None:
    from crosslmm_edge.export.tensorrt.lint_trt import lint_file

    manifest = load_manifest(int4_package)
    for graph in manifest.graphs.values():
        artifact = graph.find("onnx-trt", "int4")
        assert lint_file(int4_package / artifact.file) == [], artifact.file
    llm = manifest.graphs["llm"].find("onnx-trt", "int4")
    assert set(_blocked(onnx.load(str(int4_package / llm.file))).values()) == {4, 8}


def test_int4_answers_like_fp32(int4_package: Path, tmp_path: Path) -> None:
    report = tmp_path / "d.json"
    args = [f"{int4_package}@fp32", f"{int4_package}@int4", "--synthetic", "2", "--json"]
    assert main(["drift", *args, str(report)]) == 0
    e2e = json.loads(report.read_text())["end_to_end"]
    assert e2e["top1_agreement"] >= 0.95 and e2e["greedy_exact_match"] >= 0.95


def test_shared_cache_answers_survive_reuse_and_saved_states(int4_package, tmp_path, capsys):
    """The GroupQueryAttention graph writes its cache in place: a second question from the
    cached prefix, and one from a saved (sequence-major) state, answer as a fresh run does."""
    from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
    from crosslmm_edge.runtime.inference.sampling import GenerationOptions

    assert (
        load_manifest(int4_package).graphs["llm"].find("onnx", "int4").build["attention"] == "gqa"
    )
    video = tmp_path / "clip.mp4"
    write_scene_video(video, 9, 2, 8)
    questions, options = ["what colour is the dot?", "which way does it move?"], GenerationOptions()
    state = tmp_path / "state.npz"
    base = ["ask", str(int4_package), "--precision", "int4", "--video", str(video), "--json"]
    listed = [arg for q in questions for arg in ("--question", q)]
    assert main([*base, *listed, "--save-video-state", str(state)]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    assert [a["video_prefix_reused"] for a in answers] == [False, True]
    alone = RuntimeAssistant(int4_package, precision="int4")
    alone.set_video(str(video))
    assert alone.pipeline.shared_kv and alone.cache is not None and alone.cache.head_major
    assert alone.ask(questions[1], options).token_ids == answers[1]["token_ids"]
    assert main([*base, "--question", questions[1], "--video-state", str(state)]) == 0
    loaded = json.loads(capsys.readouterr().out)["answers"][0]
    assert loaded["video_prefix_reused"] and loaded["token_ids"] == answers[1]["token_ids"]


def test_build_int4_takes_the_onnx_trt_graphs(int4_package, tmp_path, monkeypatch, capsys):
    """`build --precision int4` on the TensorRT double, then `ask` on its engines."""
    from fake_trt import install
    from tiny_models import write_test_video

    package = tmp_path / "pkg"
    shutil.copytree(int4_package, package)
    install(monkeypatch)
    assert main(["build", str(package), "--precision", "int4"]) == 0
    for graph in load_manifest(package).graphs.values():
        source = graph.find("onnx-trt", "int4")
        record = graph.find("tensorrt", "int4").build
        assert record["source"] == {"file": source.file, "sha256": source.sha256}
    video = write_test_video(tmp_path / "clip.mp4", frames=8, size=32)
    capsys.readouterr()
    args = ["ask", str(package), "--video", str(video), "--question", "what colour is the dot?"]
    assert main([*args, "--backend", "tensorrt", "--precision", "int4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["token_ids"]


def _outlier_copy(package: Path, target: Path, module: str) -> Path:
    """A copy whose ``module`` MatMul has one 50x row per block of 32 (function unchanged).

    Row ``c`` of the weight is multiplied by 50 and channel ``c`` of the RMSNorm
    weight before it divided by 50: FP32 computes the same, but each block's
    INT4 scale is set by the big row and the other 31 rows lose their precision.
    """
    from onnx import numpy_helper

    from crosslmm_edge.calibration.recipes import weight_nodes
    from crosslmm_edge.runtime.package.files import file_sha256

    shutil.copytree(package, target)
    model = onnx.load(str(target / "llm.onnx"))
    name = next(n.name for n in weight_nodes(model, "llm") if n.module == module)
    matmul = next(n for n in model.graph.node if n.name == name)
    norm = next(n for n in model.graph.node if matmul.input[0] in n.output)
    inits = {t.name: t for t in model.graph.initializer}
    gamma_name = next(i for i in norm.input if i in inits)
    gamma = numpy_helper.to_array(inits[gamma_name]).copy()
    weight = numpy_helper.to_array(inits[matmul.input[1]]).copy()
    rows = list(range(0, weight.shape[0], 32))
    gamma[rows] /= 50
    weight[rows] *= 50
    inits[gamma_name].CopyFrom(numpy_helper.from_array(gamma, gamma_name))
    inits[matmul.input[1]].CopyFrom(numpy_helper.from_array(weight, matmul.input[1]))
    onnx.save(model, str(target / "llm.onnx"))
    manifest = json.loads((target / "manifest.json").read_text())
    for artifact in manifest["graphs"]["llm"]["artifacts"]:
        if artifact["file"] == "llm.onnx":
            artifact["sha256"] = file_sha256(target / "llm.onnx")
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.slow
def test_max_drift_widens_the_group_that_really_exceeds_the_budget(
    int4_package: Path, tmp_path: Path, capsys
) -> None:
    """Round to nearest on a layer with outlier rows costs real accuracy; the search keeps
    that layer wider and every other group in INT4, and lands within the budget."""
    layer = "model.language_model.model.layers.0"
    broken = _outlier_copy(int4_package, tmp_path / "outliers", f"{layer}.self_attn.q_k_v_proj")
    out = tmp_path / "mixed"
    args = ["quantize", str(broken), "--out", str(out), "--precision", "int4", "--no-trt-int8"]
    args += ["--algorithm", "rtn", "--max-drift", "1", "--search-videos", "6", "--calib-count", "2"]
    assert main(args) == 0
    build = load_manifest(out).graphs["llm"].find("onnx", "int4").build
    search = build["int4_search"]
    assert search["trials"][0]["mix"] == "all INT4" and search["trials"][0]["drop"] > 1
    assert set(build["wider_groups"]) == {f"llm:{layer}"}
    assert search["landed"]["drop"] <= 1
    assert search["landed"]["llm_bytes"] < max(t["llm_bytes"] for t in search["trials"])
    assert "kept wider: llm:" + layer in capsys.readouterr().out


def _quantized_copy(package: Path, tmp_path: Path, *options: str) -> Path:
    """A copy of ``package`` with an INT4 set added by ``options``, on two scene videos."""
    folder = tmp_path / "pkg"
    shutil.copytree(package, folder)
    videos = [tmp_path / f"v{i}.mp4" for i in range(2)]
    for i, path in enumerate(videos):
        write_scene_video(path, 5, i, 8)
    args = ["quantize", str(folder), "--in-place", "--precision", "int4", *options]
    assert main([*args, "--calib", *map(str, videos)]) == 0
    return folder


def test_hqq_writes_blocks_with_zero_points_and_a_round_to_nearest_twin(
    embedded_fp16_package: Path, tmp_path: Path
) -> None:
    """`--algorithm hqq`: HQQ's solver, uint4 blocks with zero points; TensorRT's twin is RTN."""
    from crosslmm_edge.calibration.int4.block_quant import BlockScheme, quantize_weight
    from crosslmm_edge.calibration.int4.hqq import hqq_weight
    from crosslmm_edge.export.tensorrt.lint_trt import lint_file

    folder = _quantized_copy(embedded_fp16_package, tmp_path, "--algorithm", "hqq")
    manifest = load_manifest(folder)
    llm = manifest.graphs["llm"].find("onnx", "int4")
    assert llm.build["algorithm"] == "hqq" and not llm.build["symmetric"]
    model = onnx.load(str(folder / llm.file))
    inits = {t.name: t for t in model.graph.initializer}
    blocked = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and "_q4" in n.input[0]
    ]
    assert len(blocked) == len(llm.build["modules_by_storage"]["int4"])
    for node in blocked:  # values and zero points on the uint4 grid ONNX Runtime fuses
        assert (
            inits[node.input[0]].data_type
            == inits[node.input[2]].data_type
            == onnx.TensorProto.UINT4
        )
    twin = manifest.graphs["llm"].find("onnx-trt", "int4")
    assert twin.build["algorithm"] == "rtn" and twin.build["symmetric"]
    assert lint_file(folder / twin.file) == []
    # The solver's blocks rebuild a heavy-tailed weight about as well as round-to-nearest
    # on the same grid (a zero point off by a block or a transposed scale would not).
    weight = np.random.default_rng(0).standard_t(3, (256, 64)).astype(np.float32)
    scheme = BlockScheme(4, 32, symmetric=False)
    hqq, rtn = (
        np.abs(q(weight, scheme).dequantize(32) - weight).mean()
        for q in (hqq_weight, quantize_weight)
    )
    assert hqq < 1.05 * rtn


def test_bound_memory_is_what_onnx_dequantizelinear_makes_of_the_state(
    int4_package: Path, tmp_path: Path
):
    """The video state keeps the pooling graph's int8 memory; the runtime hands the LLM
    the memory ONNX's own ``DequantizeLinear`` (axis: KV heads) makes of it, bit for bit."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant

    video = tmp_path / "clip.mp4"
    write_scene_video(video, 4, 1, 8)
    assistant = RuntimeAssistant(int4_package, precision="int4")
    assistant.set_video(str(video))
    state, pipeline = assistant.state, assistant.pipeline
    assert state is not None and state.cross["t2v_key.0"].dtype == np.int8
    scales = np.asarray(pipeline.artifacts.by_role["llm"].dequantize_on_bind["t2v_key.0"])
    node = helper.make_node("DequantizeLinear", ["x", "s"], ["y"], axis=2)
    graph = helper.make_graph(
        [node],
        "dq",
        [helper.make_tensor_value_info(n, t, None) for n, t in (("x", 3), ("s", 1))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx_dq = ReferenceEvaluator(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    )
    memory = state.cross["t2v_key.0"]
    expected = onnx_dq.run(None, {"x": memory, "s": scales.astype(np.float32)})[0]
    ours = pipeline.memory_feeds({"t2v_key.0": memory})["t2v_key.0"]
    assert ours.dtype == np.float32 and np.array_equal(ours, expected)
    bound = assistant.text_cross["t2v_key.0"]
    held = bound.numpy() if hasattr(bound, "numpy") else np.asarray(bound)
    assert held.dtype == np.float32 and np.array_equal(held, expected)  # uploaded once


def test_dequantize_on_bind_and_spare_rows_are_checked(int4_package: Path) -> None:
    import dataclasses

    from crosslmm_edge.runtime.errors import UserError
    from crosslmm_edge.runtime.model.config import CrossLMMConfig
    from crosslmm_edge.runtime.package.graph_contract import check_manifest_contract
    from crosslmm_edge.runtime.package.manifest import Artifact

    manifest = load_manifest(int4_package)
    llm = manifest.graphs["llm"].find("onnx", "int4")
    record = llm.to_dict()
    for bad in ({"input_ids": [1.0]}, {"t2v_key.0": [-1.0, 1.0]}, {"t2v_key.0": []}):
        with pytest.raises(ValueError, match="dequantize_on_bind"):
            Artifact.from_dict({**record, "dequantize_on_bind": bad})
    for bad in (-1, True, 1.5, 5000):
        with pytest.raises(ValueError, match="kv_spare_rows"):
            Artifact.from_dict({**record, "kv_spare_rows": bad})
    assert record["kv_spare_rows"] > 0
    assert Artifact.from_dict(record) == llm  # it round-trips
    one_head = dataclasses.replace(llm, dequantize_on_bind={"t2v_key.0": (1.0,)})
    entry = dataclasses.replace(manifest.graphs["llm"], artifacts=(one_head,))
    broken = dataclasses.replace(manifest, graphs={**manifest.graphs, "llm": entry})
    config = CrossLMMConfig.from_dict(manifest.model_config)
    with pytest.raises(UserError, match=r"dequantize_on_bind t2v_key\.0"):
        check_manifest_contract(config, broken, "pkg")


class _GpuBackendDouble:
    """A backend on "cuda" that refuses to load anything: reaching ``load`` means the
    pipeline accepted the artifact set for a GPU provider."""

    name, provider, device = "double", "cuda", "cuda"

    def load(self, path, name, *args, **kwargs):
        raise LookupError(f"load {name}")


def test_a_float32_group_query_attention_llm_is_refused_on_a_gpu_provider(int4_package: Path):
    """ONNX Runtime's CUDA GroupQueryAttention takes fp16/bf16 only: the float32 op would
    run on the CPU behind the user's back, so the pipeline says so before loading."""
    from crosslmm_edge.runtime.errors import UserError
    from crosslmm_edge.runtime.inference.pipeline import Pipeline

    with pytest.raises(UserError, match="--attention standard for --provider cuda"):
        Pipeline(int4_package, precision="int4", engine=_GpuBackendDouble())
    with pytest.raises(LookupError):  # a sequence-major set goes on to load its graphs
        Pipeline(int4_package, precision="fp32", engine=_GpuBackendDouble())


def test_only_an_int4_llm_asks_for_huge_pages(int4_package: Path, monkeypatch) -> None:
    """INT4 decode gains from huge pages for a fraction of a second at open; fp32's 2 GB
    take seconds to collapse for a few per cent (docs/performance.md#huge-pages)."""
    from crosslmm_edge.runtime.backends.ort_backend import OrtBackend
    from crosslmm_edge.runtime.inference.pipeline import Pipeline

    asked = []
    monkeypatch.setattr(OrtBackend, "use_huge_pages", lambda self: asked.append(1) or 5)
    assert Pipeline(int4_package, provider="cpu", precision="int4").huge_page_bytes == 5
    assert Pipeline(int4_package, provider="cpu", precision="fp32").huge_page_bytes == 0
    assert Pipeline(int4_package, "cpu", "int4", huge_pages=False).huge_page_bytes == 0
    assert Pipeline(int4_package, "cpu", "fp32", huge_pages=True).huge_page_bytes == 5
    assert asked == [1, 1]


def test_gptq_blocks_come_from_the_calibration_gram_matrices(
    embedded_fp16_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--algorithm gptq`: every 4-bit weight (the LM head too) by GPTQ from the Gram
    matrices calibration kept; it answers like fp32; TensorRT's twin stores the same
    blocks and lints clean."""
    from crosslmm_edge.export.tensorrt.lint_trt import lint_file

    folder = _quantized_copy(embedded_fp16_package, tmp_path, "--algorithm", "gptq")
    said = capsys.readouterr()
    assert "GPTQ output error on calibration rows" in said.out
    assert "MiB of activation statistics" in said.out + said.err  # the plan, Gram included
    manifest = load_manifest(folder)
    llm = manifest.graphs["llm"].find("onnx", "int4")
    build = llm.build
    assert build["algorithm"] == "gptq" and build["symmetric"]
    assert build["gptq_weights"] == len(build["modules_by_storage"]["int4"])  # the head too
    assert 0 < build["gptq_loss_vs_rtn"] < 1
    twin = manifest.graphs["llm"].find("onnx-trt", "int4")
    assert twin.build["algorithm"] == "gptq" and lint_file(folder / twin.file) == []
    ours, theirs = (_int4_blocks(folder / a.file) for a in (llm, twin))
    assert ours and ours == theirs  # TensorRT's graph stores the very same blocks
    report = tmp_path / "d.json"
    assert (
        main(
            ["drift", f"{folder}@fp32", f"{folder}@int4", "--synthetic", "2", "--json", str(report)]
        )
        == 0
    )
    e2e = json.loads(report.read_text())["end_to_end"]
    assert e2e["top1_agreement"] >= 0.95 and e2e["greedy_exact_match"] >= 0.95


def _int4_blocks(path: Path) -> list[bytes]:
    """The packed values of every int4 weight a blocked ``DequantizeLinear`` reads, sorted."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return sorted(
        inits[n.input[0]].raw_data
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and getattr(inits.get(n.input[0]), "data_type", None) == onnx.TensorProto.INT4
    )


def test_decode_steps_in_query_rows_give_the_one_row_ops_logits(float32_cache_package, tmp_path):
    """The runtime with every decode step grouped: a copy of a float32-cache onnx/int4
    whose ``If`` takes the grouped branch from the first cached position gives the same
    logits after a video and a question, step after step, on a cache with
    ``kv_spare_rows`` beyond its capacity."""
    import hashlib

    manifest = load_manifest(float32_cache_package)
    llm = manifest.graphs["llm"].find("onnx", "int4")
    heads = manifest.model_config["text_config"]
    spare = heads["num_attention_heads"] // heads["num_key_value_heads"] - 1
    assert llm.kv_spare_rows == spare > 0
    assert llm.build["ort_fusions"]["grouped_decode"] == heads["num_hidden_layers"]
    always = tmp_path / "always"
    shutil.copytree(float32_cache_package, always)
    graph = onnx.load(str(always / llm.file), load_external_data=False)
    threshold = next(t for t in graph.graph.initializer if t.name == "grouped_decode.min_total")
    assert int(onnx.numpy_helper.to_array(threshold)) == llm.build["grouped_decode_from_past"]
    threshold.CopyFrom(onnx.numpy_helper.from_array(np.int32(0), threshold.name))
    onnx.save(graph, str(always / llm.file))
    record = json.loads((always / "manifest.json").read_text())
    for artifact in record["graphs"]["llm"]["artifacts"]:
        if artifact["file"] == llm.file:
            artifact["sha256"] = hashlib.sha256((always / llm.file).read_bytes()).hexdigest()
    (always / "manifest.json").write_text(json.dumps(record))
    video = tmp_path / "clip.mp4"
    write_scene_video(video, 4, 2, 8)
    expected, _ = _question_logits(float32_cache_package, video, (14, 3, 27, 9, 14, 5))
    got, assistant = _question_logits(always, video, (14, 3, 27, 9, 14, 5))
    cache = assistant.cache
    assert cache is not None and cache.keys[0].shape[2] == cache.capacity + spare
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _question_logits(package: Path, video: Path, tokens: tuple[int, ...]):
    """The logits of a question's prefill after ``video``, then of one decode step per
    fed token, on ``package``'s INT4 set; and the assistant that ran them."""
    from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
    from crosslmm_edge.runtime.inference.generation import run_chunk

    assistant = RuntimeAssistant(package, precision="int4")
    assistant.set_video(str(video))
    pipeline, cache = assistant.pipeline, assistant.cache
    assert cache is not None
    prompt = assistant.prompt.first_question_ids("what colour is the dot?")
    no_visual = pipeline.shapes.no_visual()
    steps = [pipeline.prefill(cache, prompt, no_visual, assistant.text_cross)]
    memory = pipeline.memory_feeds(assistant.text_cross)
    for token in tokens:
        steps.append(run_chunk(pipeline.sessions["llm"], cache, [token], no_visual, memory))
    return np.stack([np.array(step) for step in steps]), assistant


def test_a_float16_cache_package_answers_as_the_float32_cache_one(
    int4_package: Path, float32_cache_package: Path, tmp_path: Path
) -> None:
    """The default float16 cache: the contract says float16 for the cache only, every
    decode step runs in query rows, the runtime allocates the cache so, and a video's
    question gets the float32 cache's logits to half precision and the same answer."""
    from crosslmm_edge.runtime.inference.sampling import GenerationOptions

    half = int4_package
    llm = load_manifest(half).graphs["llm"].find("onnx", "int4")
    assert llm.build["kv_cache"] == "float16" and llm.build["grouped_decode_from_past"] == 0
    dtypes = {t.name: t.dtype for t in (*llm.inputs, *llm.outputs)}
    assert dtypes["past_key.0"] == dtypes["present_value.1"] == "float16"
    assert dtypes["visual_embeds"] == dtypes["t2v_key.0"] == dtypes["logits"] == "float32"
    video = tmp_path / "clip.mp4"
    write_scene_video(video, 4, 2, 8)
    logits, answers = [], []
    for package in (float32_cache_package, half):
        steps, assistant = _question_logits(package, video, (14, 3, 27, 9))
        logits.append(steps)
        answer = assistant.ask("what colour is the dot?", GenerationOptions(max_new_tokens=8))
        answers.append(answer.token_ids)
    cache = assistant.cache
    assert cache is not None and cache.keys[0].dtype == np.float16
    assert assistant.pipeline.kv_dtype == np.float16
    scale = np.abs(logits[0]).max()
    assert np.abs(logits[1] - logits[0]).max() < 2e-2 * scale
    assert answers[1] == answers[0]
