"""``quantize`` and ``drift`` on the embedded model (one FP32 export, a few synthetic videos)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from package_damage import scaled_weight_copy

from crosslmm_edge.calibration.world.evaluate import write_scene_video
from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.package.files import file_sha256
from crosslmm_edge.runtime.package.loader import choose_artifacts
from crosslmm_edge.runtime.package.manifest import load_manifest

pytestmark = pytest.mark.skipif(
    not (embedded_model_dir() / "config.json").is_file(), reason="embedded model not installed"
)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model exported in FP32."""
    from crosslmm_edge.export.graphs.package import export_package

    folder = tmp_path_factory.mktemp("int8") / "pkg"
    export_package(embedded_model_dir(), folder)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three calibration videos of the synthetic world (stream 5)."""
    folder = tmp_path_factory.mktemp("calib")
    paths = [folder / f"v{i}.mp4" for i in range(3)]
    for i, path in enumerate(paths):
        write_scene_video(path, 5, i, 8)
    return paths


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, package: Path, videos: list[Path]) -> Path:
    out = tmp_path_factory.mktemp("q") / "pkg-int8"
    assert main(["quantize", str(package), "--out", str(out), "--calib", *map(str, videos)]) == 0
    return out


def _int8_files(folder: Path) -> dict[str, str]:
    int8 = [a for g in load_manifest(folder).graphs.values() for a in g.artifacts]
    return {a.file: file_sha256(folder / a.file) for a in int8 if a.precision == "int8"}


def test_int8_artifacts_carry_their_contract(quantized: Path, package: Path) -> None:
    manifest = load_manifest(quantized)
    assert "onnx/int8" in manifest.labels() and "onnx/fp32" in manifest.labels()
    llm = manifest.graphs["llm"].find("onnx", "int8")
    fp32 = manifest.graphs["llm"].find("onnx", "fp32")
    assert llm.build["recipe"] == "default" and llm.build["calibration_videos"] == 3
    assert llm.build["source_artifacts"] == {fp32.file: fp32.sha256}
    assert len(llm.build["calibration_sha256"]) == 64
    assert {t.name: t.dtype for t in llm.inputs}["t2v_key.0"] == "int8"
    model = onnx.load(str(quantized / llm.file))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") > 36 and "QuantizeLinear" in ops
    # The tied LM head (the graph's last MatMul) reads an unquantized activation.
    head = [n for n in model.graph.node if n.op_type == "MatMul"][-1]
    assert not head.input[0].endswith("_DequantizeLinear_Output")
    assert not (package / llm.file).exists()  # --out left the source package alone


def test_onnx_runtime_runs_every_quantized_llm_matmul_as_an_integer_kernel(
    quantized: Path, tmp_path: Path
) -> None:
    """No INT8 weight is dequantized to float on every call (what made INT8 4x slower).

    ONNX Runtime fuses DQ -> MatMul only where the activation's DequantizeLinear
    feeds that one MatMul; the export's fused siblings and float MatMul outputs
    give it that everywhere in the LLM.
    """
    import onnxruntime as ort

    llm = load_manifest(quantized).graphs["llm"].find("onnx", "int8")
    quantized_matmuls = len(_quantized_modules(onnx.load(str(quantized / llm.file))))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(quantized / llm.file), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    integer = ops.count("MatMulIntegerToFloat") + ops.count("QLinearMatMul")
    assert quantized_matmuls > 0 and integer == quantized_matmuls


def test_int8_passes_lint_trt(quantized: Path) -> None:
    from crosslmm_edge.export.tensorrt.lint_trt import lint_file

    for name in _int8_files(quantized):
        assert lint_file(quantized / name) == [], name


def test_same_videos_in_another_order_give_identical_bytes(
    capsys, tmp_path: Path, package: Path, videos: list[Path], quantized: Path
) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    for path in reversed(videos):  # a folder, other names, plus a duplicate and a corrupt file
        shutil.copy(path, folder / f"copy-{path.name}")
    shutil.copy(videos[0], folder / "again.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "other"
    assert main(["quantize", str(package), "--out", str(out), "--calib", str(folder)]) == 0
    assert _int8_files(out) == _int8_files(quantized)
    notes = [line for line in capsys.readouterr().err.splitlines() if "onnx-trt/int8" in line]
    assert len(notes) == 1 and "--add --dtype fp16" in notes[0]  # no fp16 graphs to build on


def test_int8_answers_like_fp32(quantized: Path, tmp_path: Path) -> None:
    report = tmp_path / "d.json"
    args = [f"{quantized}@fp32", f"{quantized}@int8", "--synthetic", "2", "--json", str(report)]
    assert main(["drift", *args]) == 0
    data = json.loads(report.read_text())
    stages, e2e = data["stages"], data["end_to_end"]
    assert stages["vision_features"]["identical"]  # default recipe leaves vision in float
    assert 0 < stages["cross_kv"]["rel_l2"] < 0.05 and stages["cross_kv"]["sqnr_db"] > 25
    assert e2e["top1_agreement"] >= 0.95 and e2e["greedy_exact_match"] >= 0.95
    assert set(e2e["accuracy"]["test"]) == {"colour", "shape", "direction", "dot"}


def test_drift_of_a_package_against_itself_is_zero(package: Path, tmp_path: Path) -> None:
    report = tmp_path / "self.json"
    args = [str(package), str(package), "--synthetic", "1", "--json", str(report)]
    assert main(["drift", *args]) == 0
    data = json.loads(report.read_text())
    for stage in data["stages"].values():
        assert stage["identical"] and stage["max_abs"] == 0.0 and stage["rel_l2"] == 0.0
    e2e = data["end_to_end"]
    assert e2e["kl_mean"] == 0.0 and e2e["top1_agreement"] == 1.0
    assert e2e["greedy_exact_match"] == 1.0


def test_drift_flags_a_weight_scaled_tenfold(package: Path, tmp_path: Path) -> None:
    module = "model.language_model.model.layers.1.mlp.down_proj"
    broken = scaled_weight_copy(package, tmp_path / "x10", module, 10.0)
    report = tmp_path / "x10.json"
    args = [str(package), str(broken), "--synthetic", "1", "--json", str(report)]
    assert main(["drift", *args]) == 0
    stages = json.loads(report.read_text())["stages"]
    assert stages["vision_features"]["identical"]  # only the LLM changed
    assert stages["logits"]["rel_l2"] > 0.1 and stages["logits"]["sqnr_db"] < 20


def _refused(capsys, args: list[str], text: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and text in err[-1], err


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--calib", "MISSING"], "no such file"),
        (["--calib", "EMPTY"], "no files"),
        (["--calib", "BROKEN"], "no usable calibration video"),
        (["--recipe", "nope"], "unknown"),
        (["--exclude", "*.no_such_proj"], "matches no weight"),
    ],
)
def test_bad_quantize_input_is_one_error_line(
    capsys, tmp_path: Path, package: Path, videos: list[Path], extra: list[str], text: str
) -> None:
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BROKEN").mkdir()
    (tmp_path / "BROKEN" / "a.mp4").write_bytes(b"\x00" * 100)
    extra = [str(tmp_path / e) if e.isupper() else e for e in extra]
    if "--calib" not in extra:
        extra += ["--calib", str(videos[0])]
    out = tmp_path / "out"
    _refused(capsys, ["quantize", str(package), "--out", str(out), *extra], text)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert "onnx/int8" not in load_manifest(package).labels()


def test_drift_refuses_another_model(capsys, tmp_path: Path, package: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(package, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_config"]["text_config"]["rope_theta"] = 1234.0
    (other / "manifest.json").write_text(json.dumps(manifest))
    _refused(capsys, ["drift", str(package), str(other), "--synthetic", "1"], "different models")


def test_int8_cross_kv_holds_a_quarter_of_fp32(quantized: Path, videos: list[Path]) -> None:
    from crosslmm_edge.runtime.inference.pipeline import Pipeline
    from crosslmm_edge.runtime.video.decode import load_video

    sizes = {}
    for precision in ("fp32", "int8"):
        pipeline = Pipeline(quantized, "cpu", precision)
        pixels = load_video(videos[0], pipeline.dims.num_frames, pipeline.dims.image_size)
        _, _, cross = pipeline.encode([pixels])
        assert {v.dtype.name for v in cross.values()} == {precision.replace("fp", "float")}
        sizes[precision] = sum(v.nbytes for v in cross.values())
    assert sizes["fp32"] == 4 * sizes["int8"]


def test_calibration_encodes_frames_in_the_runtime_chunks(
    monkeypatch, package: Path, tmp_path: Path
) -> None:
    """The vision encoder sees at most ``chunk_frames`` frames per call, as in ``ask``:
    one call over every frame held all their activations (3.7 GiB more for the 2B shape
    at 32 frames). The ranges agree whatever the chunking, up to float rounding."""
    from functools import partial

    from crosslmm_edge.calibration.collect.calibrate import calibrate
    from crosslmm_edge.calibration.int8.quantize import QuantizeOptions
    from crosslmm_edge.runtime.chat import assistant
    from crosslmm_edge.runtime.video import video_state

    encoded: list[int] = []
    real_encode = video_state.encode_frames

    def recording(vision, pooling, pixels):
        encoded.append(len(pixels))
        return real_encode(vision, pooling, pixels)

    monkeypatch.setattr(video_state, "encode_frames", recording)
    runtime_assistant = assistant.RuntimeAssistant
    ranges = []
    for chunk in (3, 8):
        monkeypatch.setattr(
            assistant, "RuntimeAssistant", partial(runtime_assistant, chunk_frames=chunk)
        )
        work = tmp_path / str(chunk)
        work.mkdir()
        found = calibrate(package, work, (None, 1, 0), QuantizeOptions(), lambda _: None, 8)
        ranges.append(
            {
                (role, name): (stats.low, stats.high)
                for role, table in found.stats.by_role.items()
                for name, stats in table.items()
            }
        )
    assert encoded == [3, 3, 2, 8]
    # Equal up to float rounding: a vision call over 3 frames and one over 8 run GEMMs of
    # other shapes, and one fresh-clone run measured the random-weight LLM's ranges up to
    # 0.7 % apart (every other run here: bit-equal).
    assert ranges[0].keys() == ranges[1].keys() and ranges[0]
    for name, (low, high) in ranges[0].items():
        assert ranges[1][name] == pytest.approx((low, high), rel=0.02, abs=1e-3), name


def test_max_drift_search_keeps_the_costly_group_in_float(monkeypatch, package: Path) -> None:
    """The greedy search on a fake accuracy: DCAL 1 costs 3 points, layer 0 half a point."""
    from crosslmm_edge.calibration import quantize_package
    from crosslmm_edge.calibration.int8 import search
    from crosslmm_edge.calibration.int8.quantize import QuantizeOptions

    trials: list[QuantizeOptions] = []
    monkeypatch.setattr(quantize_package, "add_int8", lambda _pkg, _cal, opts: trials.append(opts))

    def accuracy(_pkg, precision: str, _videos: int) -> dict[str, float]:
        if precision == "fp32":
            return {"colour": 1.0, "dot": 1.0}
        skipped = trials[-1].skip_groups
        dot = 1.0 - 0.03 * ("llm:model.dcal.1" not in skipped)
        dot -= 0.005 * ("llm:model.language_model.model.layers.0" not in skipped)
        return {"colour": 1.0, "dot": dot}

    monkeypatch.setattr(search, "_accuracy", accuracy)
    options, kept = search.search_recipe(package, None, QuantizeOptions(), 1.0, 4)
    assert options.skip_groups == ("llm:model.dcal.1",) and list(kept) == ["llm:model.dcal.1"]
    assert options.int8_cross_kv
    sensitivity = options.search["sensitivity_points"]
    assert next(iter(sensitivity)) == "llm:model.dcal.1"
    assert sensitivity["llm:model.dcal.1"] == pytest.approx(3.0)


@pytest.fixture(scope="module")
def quantized16(tmp_path_factory, embedded_fp16_package: Path, videos: list[Path]) -> Path:
    """The FP32 and fp16 export, quantized in place (onnx/int8 and onnx-trt/int8)."""
    folder = tmp_path_factory.mktemp("q16") / "pkg"
    shutil.copytree(embedded_fp16_package, folder)
    assert main(["quantize", str(folder), "--in-place", "--calib", *map(str, videos[:2])]) == 0
    return folder


def _quantized_modules(model: onnx.ModelProto) -> list[str]:
    """Module paths of the MatMuls whose weight is a dequantized INT8 initializer."""
    from crosslmm_edge.calibration.recipes import module_path

    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [module_path(n) for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in dq]


def _qdq_counts(model: onnx.ModelProto) -> tuple[int, int]:
    ops = [n.op_type for n in model.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def test_trt_int8_has_the_fp32_qdq_on_the_fp16_graphs(quantized16: Path) -> None:
    from crosslmm_edge.export.tensorrt.lint_trt import lint_file

    manifest = load_manifest(quantized16)
    assert "onnx-trt/int8" in manifest.labels() and "onnx/int8" in manifest.labels()
    total = 0
    for role, graph in manifest.graphs.items():
        trt, int8 = graph.find("onnx-trt", "int8"), graph.find("onnx", "int8")
        fp16 = graph.find("onnx", "fp16")
        assert trt.build["base_precision"] == "fp16" and int8.build["base_precision"] == "fp32"
        assert trt.build["source_artifacts"] == {fp16.file: fp16.sha256}
        assert trt.build["calibration_sha256"] == int8.build["calibration_sha256"]
        pairs = zip(int8.inputs, fp16.inputs, strict=True)
        assert [t.dtype for t in trt.inputs] == [
            a.dtype if a.dtype == "int8" else b.dtype for a, b in pairs
        ]
        model = onnx.load(str(quantized16 / trt.file))
        ref = onnx.load(str(quantized16 / int8.file))
        assert [o.version for o in model.opset_import if o.domain == ""] == [19]
        inits = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT16, node.name
                assert inits[node.input[2]].data_type == onnx.TensorProto.INT8, node.name
        modules = _quantized_modules(model)
        assert "" not in modules and len(set(modules)) == len(modules)  # module paths survived
        assert sorted(modules) == sorted(int8.build["quantized_modules"])
        total += len(modules)
        assert _qdq_counts(model) == _qdq_counts(ref), role  # same placement, same sharing
        assert lint_file(quantized16 / trt.file) == [], trt.file
        onnx.checker.check_model(model, full_check=True)
    # The default recipe, after export fused siblings (graph_passes): per decoder layer
    # q_k_v, o, gate_up, down (4 x 4), per DCAL q and o of both attentions (2 x 4) in the LLM;
    # per DCAL attention one k_v in the pooling graph (2 x 2).
    assert total == 28
    chosen = choose_artifacts(manifest, "onnx", "int8").by_role.values()  # what ask/ORT runs
    assert {(a.backend, a.build["base_precision"]) for a in chosen} == {("onnx", "fp32")}


def _int8_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Module path -> the INT8 weight of its quantized MatMul."""
    from crosslmm_edge.calibration.recipes import module_path

    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in dq]
    return {module_path(n): numpy_helper.to_array(inits[dq[n.input[1]]]) for n in matmuls}


def test_trt_int8_weights_equal_the_fp32_int8_weights(quantized16: Path) -> None:
    """Per-channel INT8 of the fp16 weights: the FP32 graph's INT8 values, up to fp16 rounding.

    A wrong channel axis, scale or pairing moves most values by far more than one step.
    """
    for graph in load_manifest(quantized16).graphs.values():
        trt, ref = (
            _int8_weights(onnx.load(str(quantized16 / graph.find(backend, "int8").file)))
            for backend in ("onnx-trt", "onnx")
        )
        assert trt.keys() == ref.keys()
        for module, a in trt.items():
            b = ref[module]
            assert a.dtype == b.dtype == np.int8 and a.shape == b.shape
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.max() <= 1 and np.mean(diff == 0) > 0.97, module  # fp16 rounding


def _decode_logits(package: Path, backend: str, precision: str) -> np.ndarray:
    """Logits of one decode step after a video prefix (random frames, fixed seed)."""
    from crosslmm_edge.runtime.inference.pipeline import Pipeline

    pipeline = Pipeline(package, provider="cpu", backend=backend, precision=precision)
    pixels = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    _, embeds, cross = pipeline.encode([pixels])
    cache = pipeline.new_cache(64)
    uploaded = {k: pipeline.upload(v) for k, v in cross.items()}
    pipeline.prefill(cache, [1, 5, 9], pipeline.upload(embeds), uploaded)
    text = {
        k: v if k.startswith("t2v") else pipeline.shapes.no_memory() for k, v in uploaded.items()
    }
    return np.asarray(pipeline.prefill(cache, [7], pipeline.shapes.no_visual(), text), np.float32)


def test_build_int8_takes_the_onnx_trt_graphs(quantized16, tmp_path, monkeypatch, capsys):
    """`build --precision int8` on the TensorRT double (its engines run the ONNX in ORT CPU)."""
    from fake_trt import install
    from tiny_models import write_test_video

    package = tmp_path / "pkg"
    shutil.copytree(quantized16, package)
    install(monkeypatch)
    assert main(["build", str(package), "--precision", "int8"]) == 0
    graphs = load_manifest(package).graphs
    for graph in graphs.values():
        source = graph.find("onnx-trt", "int8")
        record = graph.find("tensorrt", "int8").build
        assert record["source"] == {"file": source.file, "sha256": source.sha256}
    io = {i["name"]: i["dtype"] for i in graphs["llm"].find("tensorrt", "int8").build["io"]}
    assert io["t2v_key.0"] == "int8" and io["visual_embeds"] == "float16"
    int8, fp16 = (
        _decode_logits(package, "tensorrt", "int8"),
        _decode_logits(package, "onnx", "fp16"),
    )
    cosine = float(int8 @ fp16 / np.linalg.norm(int8) / np.linalg.norm(fp16))
    assert 0.99 <= cosine < 1.0 - 1e-6, cosine  # close, yet not the fp16 graph itself
    video = write_test_video(tmp_path / "clip.mp4", frames=8, size=32)
    capsys.readouterr()
    args = ["ask", str(package), "--video", str(video), "--question", "what colour is the dot?"]
    assert main([*args, "--backend", "tensorrt", "--precision", "int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["token_ids"]


def test_the_synthetic_calibration_set_hashes_the_same_in_every_writing(tmp_path) -> None:
    """The build record's calibration hash names the set: writing the synthetic videos
    again (here 16 of them, twice, in one process, where lossy H.264 had varied) gives
    the same files, so the same hash."""
    from crosslmm_edge.calibration.collect.calib_data import selection_hash, synthetic_videos

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = synthetic_videos(tmp_path / "a", 16, 8), synthetic_videos(tmp_path / "b", 16, 8)
    assert [v.sha256 for v in first] == [v.sha256 for v in second]
    assert selection_hash(first, 0) == selection_hash(second, 0)
