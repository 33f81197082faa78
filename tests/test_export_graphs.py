"""Exported graphs equal the PyTorch model; the package keeps the contract.

Two tiny random configs cover both ``v2v_scope`` values, ``dcal_mlp``, GQA
ratios 7 and 1, tied and untied heads, bilinear and avg pooling, a DCAL
after every layer and after every second one. Two layers each: the dynamo
exporter's time grows with the graph (~3 s per tiny layer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import save_tiny_checkpoint, tiny_config, tiny_model

from crosslmm_edge.cli import main
from crosslmm_edge.export.onnx_export import export_graph
from crosslmm_edge.export.package import export_package
from crosslmm_edge.export.verify import size_cases, verify_package
from crosslmm_edge.runtime.model.contract import ExportLimits, graph_specs
from crosslmm_edge.runtime.package.files import file_sha256
from crosslmm_edge.runtime.package.manifest import load_manifest

CONFIGS = {
    # GQA 7:1, V2V over the whole video, gated DCAL MLP, tied head, bilinear pooling.
    # head_dim 16 makes the MLP weights larger than torch's 8192-element folding limit.
    "video-gqa7-mlp": dict(
        heads=7,
        kv_heads=1,
        head_dim=16,
        v2v_scope="video",
        dcal_mlp=True,
        tie=True,
        layers=2,
        dcal_every=1,
    ),
    # GQA 1:1, V2V per frame, untied head, avg pooling to 1 token per frame.
    "frame-gqa1": dict(
        heads=4,
        kv_heads=4,
        v2v_scope="frame",
        dcal_mlp=False,
        tie=False,
        pooled_grid=1,
        layers=2,
        dcal_every=2,
    ),
}


def _config(name: str):
    config = tiny_config(**CONFIGS[name])
    if name == "frame-gqa1":
        config.pool_mode = "avg"
    return config


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def package(request, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = save_tiny_checkpoint(root / "ckpt", _config(request.param), seed=1)
    export_package(checkpoint, root / "pkg", max_context=64)
    return checkpoint, root / "pkg"


@pytest.fixture(scope="module")
def report(package):
    return verify_package(package[1])


def test_every_graph_matches_pytorch_at_every_size(report):
    assert report.checks, "no output was compared"
    failures = [c.line() for c in report.checks if c.max_abs > 1e-4]
    assert not failures, "\n".join(failures)
    cases = {(c.graph, c.case) for c in report.checks}
    assert {g for g, _ in cases} == {"vision_encoder", "pooling", "llm"}
    assert all(c.cosine > 0.9999 for c in report.checks)


def test_chained_graphs_give_the_reference_greedy_tokens(report):
    (chain,) = report.chains
    assert len(chain.torch_tokens) == 21  # the question chunk's token, then 20 decode steps
    assert chain.onnx_tokens == chain.torch_tokens
    assert chain.max_logit_error <= 1e-4  # every step's logits, not just their argmax


def test_size_cases_cover_zero_length_dims():
    model = tiny_model(_config("frame-gqa1"))
    llm = [sizes for _, sizes in size_cases(model, ExportLimits(3, 64))["llm"]]
    for dim in ("text_len", "visual_len", "past_len", "v2v_len"):
        assert any(s[dim] == 0 for s in llm), dim
        assert any(s[dim] > 0 for s in llm), dim
    assert {s["seq_len"] for s in llm} >= {1} and max(s["seq_len"] for s in llm) > 1


def test_manifest_records_the_contract(package):
    checkpoint, pkg = package
    manifest = load_manifest(pkg)
    config = json.loads((checkpoint / "config.json").read_text())
    assert (
        manifest.model_config["text_config"]["num_attention_heads"]
        == config["text_config"]["num_attention_heads"]
    )
    assert manifest.source["checkpoint"] == str(checkpoint.resolve())
    assert manifest.format_version == 2 and manifest.labels() == ["onnx/fp32"]
    assert manifest.limits == {"max_frames": 3, "max_context": 64}
    assert (pkg / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()
    llm = manifest.graphs["llm"]
    llm_fp32 = llm.find("onnx", "fp32")
    assert set(llm_fp32.build) >= {"torch", "onnx", "onnxruntime", "opset", "crosslmm_edge"}
    assert [t.name for t in llm_fp32.inputs[:5]] == [
        "input_ids",
        "visual_embeds",
        "position_ids",
        "past_key.0",
        "past_value.0",
    ]
    assert llm_fp32.outputs[0].name == "logits" and llm_fp32.outputs[0].dims == (
        1,
        config["text_config"]["vocab_size"],
    )
    assert llm.dims["past_len"].min == 0 and llm.dims["text_len"].min == 0
    for role, graph in manifest.graphs.items():
        art = graph.find("onnx", "fp32")
        assert file_sha256(pkg / art.file) == art.sha256
        model = onnx.load(str(pkg / art.file), load_external_data=False)
        dims = {
            v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
            for v in (*model.graph.input, *model.graph.output)
        }
        assert dims == {t.name: t.dims for t in (*art.inputs, *art.outputs)}, role


def test_pooling_is_a_matmul_and_the_embedding_is_stored_once(package):
    checkpoint, pkg = package
    pooling = onnx.load(str(pkg / "pooling.onnx"))
    assert not {n.op_type for n in pooling.graph.node} & {"Resize", "AveragePool", "Upsample"}
    llm = onnx.load(str(pkg / "llm.onnx"))
    config = json.loads((checkpoint / "config.json").read_text())["text_config"]
    shapes = (
        [config["vocab_size"], config["hidden_size"]],
        [config["hidden_size"], config["vocab_size"]],
    )
    table = [i for i in llm.graph.initializer if list(i.dims) in shapes]
    assert len(table) == (1 if config["tie_word_embeddings"] else 2)


def test_weights_are_stored_pre_transposed(package):
    _, pkg = package
    for name in ("pooling.onnx", "llm.onnx"):
        graph = onnx.load(str(pkg / name)).graph
        weights = {i.name for i in graph.initializer}
        transposed = [
            n.input[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights
        ]
        assert all("embed_tokens" in w for w in transposed), (name, transposed)  # tied head only


def test_lint_trt_passes_on_the_exported_graphs(package, capsys):
    _, pkg = package
    assert main(["lint-trt", str(pkg)]) == 0
    assert capsys.readouterr().out.count(": ok") == 3


def test_large_weights_go_to_external_data(tmp_path, monkeypatch):
    import crosslmm_edge.export.onnx_export as onnx_export
    from crosslmm_edge.export.graph_modules import graph_module

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1)  # stands in for 2 GB
    model = tiny_model(tiny_config())
    spec = graph_specs(model.config, ExportLimits(3, 64))["vision_encoder"]
    files = export_graph(
        graph_module("vision_encoder", model),
        spec,
        {"frames": 2},
        260,
        tmp_path / "vision_encoder.onnx",
    )
    assert [f.name for f in files] == ["vision_encoder.onnx", "vision_encoder.onnx.data"]
    stored = onnx.load(str(files[0]), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in stored.graph.initializer)
    size = model.config.vision_config.image_size
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    import torch

    with torch.no_grad():
        expected = model.encode_frames(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(session.run(None, {"pixel_values": pixels})[0], expected, atol=1e-4)


def test_the_embedded_model_exports_and_verifies(tmp_path):
    from crosslmm_edge.models import embedded_model_dir

    embedded = embedded_model_dir()
    if not (embedded / "config.json").is_file():
        pytest.skip(f"the embedded model is not installed at {embedded}")
    frames = json.loads((embedded / "config.json").read_text()).get("num_frames", 8)
    export_package(embedded, tmp_path / "pkg", max_frames=min(frames, 8))
    report = verify_package(tmp_path / "pkg")
    assert report.ok, report.worst.line()
    assert max(c.max_abs for c in report.checks) <= 1e-4
    assert all(c.onnx_tokens == c.torch_tokens for c in report.chains)


def test_an_all_logits_graph_returns_every_position(tmp_path):
    import torch

    from crosslmm_edge.export.dcal import CrossKV
    from crosslmm_edge.export.graph_modules import graph_module
    from crosslmm_edge.export.graph_specs import random_inputs, trace_sizes
    from crosslmm_edge.runtime.model.contract import llm_sizes

    model = tiny_model(tiny_config(layers=2, dcal_every=2))
    config = model.config
    spec = graph_specs(config, ExportLimits(3, 64), all_logits=True)["llm"]
    path = tmp_path / "llm.onnx"
    vocab = config.text_config.vocab_size
    export_graph(
        graph_module("llm", model, all_logits=True), spec, trace_sizes(config)["llm"], vocab, path
    )
    inputs = random_inputs(spec, llm_sizes(config, 3, 2, 4, 2), vocab, torch.Generator())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    ids, visual, positions, *caches = inputs.values()
    past, cross = [tuple(caches[0:2]), tuple(caches[2:4])], [CrossKV(*caches[4:8])]
    with torch.no_grad():
        expected = model(ids, visual, positions, past, cross)[0].numpy()
    assert logits.shape == (1, 3 + 2 * config.tokens_per_frame, vocab)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_the_pooling_graph_holds_the_projector_once(package):
    checkpoint, pkg = package
    config = json.loads((checkpoint / "config.json").read_text())
    shapes = {
        (config["vision_config"]["hidden_size"], config["text_config"]["hidden_size"]),
        (config["text_config"]["hidden_size"], config["vision_config"]["hidden_size"]),
    }
    pooling = onnx.load(str(pkg / "pooling.onnx"))
    assert sum(tuple(i.dims) in shapes for i in pooling.graph.initializer) == 1


def test_pooling_chunks_concatenate_to_the_whole_video(package):
    _, pkg = package
    session = ort.InferenceSession(str(pkg / "pooling.onnx"), providers=["CPUExecutionProvider"])
    shape = [
        d if isinstance(d, int) else 3
        for d in load_manifest(pkg).graphs["pooling"].artifacts[0].inputs[0].dims
    ]
    features = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    whole = session.run(None, {"patch_features": features})
    first = session.run(None, {"patch_features": features[:2]})
    second = session.run(None, {"patch_features": features[2:]})
    for full, a, b in zip(whole, first, second, strict=True):
        np.testing.assert_allclose(np.concatenate([a, b], axis=1), full, atol=1e-5)
