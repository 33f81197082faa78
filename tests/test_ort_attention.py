"""GroupQueryAttention in place of the exported decoder attention (onnx/int4's graph)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from crosslmm_edge.export.graphs.ort_attention import AttentionHeads, shared_kv_specs
from crosslmm_edge.export.graphs.ort_fusions import fuse_for_onnx_runtime, rope_tables
from crosslmm_edge.export.graphs.ort_grouped_decode import spare_rows
from crosslmm_edge.runtime.backends.base import HostArray
from crosslmm_edge.runtime.inference.kv_cache import KVCache, cache_from_prefix
from crosslmm_edge.runtime.package.manifest import load_manifest

PAST, NEW, SPARE = 5, 7, 4  # cached positions, the chunk, unused rows after it


@pytest.fixture(scope="module")
def graphs(embedded_fp16_package: Path) -> tuple[onnx.ModelProto, onnx.ModelProto, dict, object]:
    manifest = load_manifest(embedded_fp16_package)
    plain = onnx.load(str(embedded_fp16_package / "llm.onnx"))
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    heads = AttentionHeads.from_manifest(manifest)
    # every decode step in query rows: the embedded model's contexts are short
    counts = fuse_for_onnx_runtime(fused, rope_tables(manifest), heads, grouped_from_past=0)
    return plain, fused, counts, manifest


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _plain_feeds(session: ort.InferenceSession, shift: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = {"text_len": NEW, "visual_len": 0, "seq_len": NEW, "past_len": PAST}
    sizes.update({"v2v_len": 0, "memory_len": 20})
    feeds = {}
    for spec in session.get_inputs():
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        if spec.name == "position_ids":
            feeds[spec.name] = np.arange(PAST, PAST + NEW, dtype=np.int64)[None] + shift
        elif spec.name == "input_ids":
            feeds[spec.name] = rng.integers(4, 50, shape).astype(np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _branch_ops(node: onnx.NodeProto) -> dict[str, list[str]]:
    return {a.name: [n.op_type for n in a.g.node] for a in node.attribute if a.HasField("g")}


def test_every_decoder_layer_becomes_one_group_query_attention(graphs) -> None:
    """Per layer one ``If(one token)``: the grouped op for a decode step, the op for a chunk."""
    plain, fused, counts, manifest = graphs
    layers = AttentionHeads.from_manifest(manifest).num_layers
    ops = Counter(n.op_type for n in fused.graph.node)
    branches = [_branch_ops(n) for n in fused.graph.node if n.op_type == "If"]
    assert counts["group_query_attention"] == counts["grouped_decode"] == len(branches) == layers
    for branch in branches:
        assert branch["else_branch"] == ["GroupQueryAttention"]
        assert branch["then_branch"].count("GroupQueryAttention") == 1
    softmaxes = Counter(n.op_type for n in plain.graph.node)["Softmax"]
    assert ops["Softmax"] == softmaxes - layers  # the DCAL cross-attention keeps its own
    inputs, outputs = shared_kv_specs(manifest)
    assert [i.name for i in fused.graph.input] == [t.name for t in inputs]
    assert [o.name for o in fused.graph.output] == [t.name for t in outputs]


@pytest.mark.parametrize("shift", [0, 3])
def test_the_shared_cache_graph_computes_what_the_exported_one_does(graphs, shift: int) -> None:
    """Same logits; the chunk's K/V written in place at its positions, the rest untouched.

    ``shift`` moves the RoPE positions off the cache positions: the op must rotate
    by ``position_ids``, as the exported graph does, not by where the cache ends.
    """
    plain, fused, _, _ = graphs
    feeds = _plain_feeds(_session(plain), shift)
    names = [o.name for o in plain.graph.output]
    expected = dict(zip(names, _session(plain).run(None, feeds), strict=True))
    rng = np.random.default_rng(1)
    shared = {k: v for k, v in feeds.items() if not k.startswith("past_")}
    buffers = {}
    for name, past in feeds.items():
        if name.startswith("past_"):  # [1, P, kvh, hd] -> head-major [1, kvh, P+L+spare, hd]
            kvh, hd = past.shape[2:]
            buffer = rng.standard_normal((1, kvh, PAST + NEW + SPARE, hd)).astype(np.float32)
            buffer[:, :, :PAST] = past.transpose(0, 2, 1, 3)
            buffers[name] = buffer
    shared.update(buffers)
    shared["seqlens_k"] = np.array([PAST + NEW - 1], np.int32)
    shared["total_sequence_length"] = np.array(PAST + NEW, np.int32)
    session = _session(fused)
    got = dict(zip([o.name for o in fused.graph.output], session.run(None, shared), strict=True))
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-4, atol=1e-4)
    for name, buffer in buffers.items():
        present = got[name.replace("past_", "present_")]  # the whole buffer, updated
        new = expected[name.replace("past_", "present_")].transpose(0, 2, 1, 3)
        np.testing.assert_allclose(present[:, :, PAST : PAST + NEW], new, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(present[:, :, :PAST], buffer[:, :, :PAST])


def test_head_major_cache_feeds_whole_buffers_and_the_chunk_positions() -> None:
    cache = KVCache.empty(2, 16, 2, 4, head_major=True)
    cache.advance(5)
    feeds = cache.past_feeds(3)
    assert feeds["past_key.0"].shape == (1, 2, 16, 4)
    assert feeds["seqlens_k"].tolist() == [7] and int(feeds["total_sequence_length"]) == 8
    assert cache.slot_targets(3)["present_value.1"] is cache.values[1]
    with pytest.raises(ValueError, match="KV cache full"):
        cache.slot_targets(12)


def test_host_copies_are_sequence_major_in_both_layouts() -> None:
    rng = np.random.default_rng(0)
    keys = [rng.standard_normal((1, 6, 2, 4)).astype(np.float32) for _ in range(2)]
    values = [rng.standard_normal((1, 6, 2, 4)).astype(np.float32) for _ in range(2)]
    for head_major in (False, True):
        cache = cache_from_prefix(keys, values, 10, HostArray, head_major)
        assert cache.capacity == 10 and cache.length == 6
        back_keys, back_values = cache.prefix_arrays()
        for a, b in zip([*keys, *values], [*back_keys, *back_values], strict=True):
            np.testing.assert_array_equal(a, b)
    stored = cache.keys[0].numpy()  # the last one: head-major [1, kvh, capacity, hd]
    np.testing.assert_array_equal(stored[0, 1, :6], keys[0][0, :, 1])


def _decode_feeds(session: ort.InferenceSession, past: int, shift: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    sizes = {"text_len": 1, "visual_len": 0, "seq_len": 1, "past_len": past}
    sizes.update({"v2v_len": 0, "memory_len": 20})
    feeds = {}
    for spec in session.get_inputs():
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        if spec.name == "position_ids":
            feeds[spec.name] = np.array([[past + shift]], dtype=np.int64)
        elif spec.name == "input_ids":
            feeds[spec.name] = rng.integers(4, 50, shape).astype(np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _decode_in_place(plain, fused, manifest, past: int, shift: int, kv=np.float32) -> bool:
    """One token through ``fused``, its cache (of type ``kv``) bound in place as the
    runtime binds it; checks logits, the new K/V row and every row outside the scratch
    ones against the exported graph. Returns whether the scratch rows after the token
    were written."""
    # float16 cache: q, k, v and the attention output are rounded to half precision
    # (the op alone: 3-9e-4 of its largest output); through the embedded model's layers
    # the logits moved by up to 0.12 at past 511 (a random prefix).
    half = kv == np.float16
    close = {"rtol": 1e-2, "atol": 1e-2} if half else {"rtol": 1e-4, "atol": 1e-4}
    logits_close = {"rtol": 5e-2, "atol": 5e-2} if half else close
    heads = AttentionHeads.from_manifest(manifest)
    spare = spare_rows(heads)
    feeds = _decode_feeds(_session(plain), past, shift)
    expected = dict(
        zip([o.name for o in plain.graph.output], _session(plain).run(None, feeds), strict=True)
    )
    layers, kvh, hd = heads.num_layers, heads.num_kv_heads, heads.head_dim
    capacity = min(past + 4, manifest.limits["max_context"])  # at 511: the last row
    cache = KVCache.empty(layers, capacity, kvh, hd, kv, head_major=True, spare_rows=spare)
    rng = np.random.default_rng(3)
    for i, buffer in enumerate([*cache.keys, *cache.values]):  # noise, then the prefix
        buffer.numpy()[...] = rng.standard_normal(buffer.shape).astype(kv)
        name = f"past_key.{i}" if i < layers else f"past_value.{i - layers}"
        buffer.numpy()[:, :, :past] = feeds[name].transpose(0, 2, 1, 3)
    cache.advance(past)
    before = [b.numpy().copy() for b in [*cache.keys, *cache.values]]
    session = _session(fused)
    binding = session.io_binding()
    inputs = {k: v for k, v in feeds.items() if not k.startswith("past_")}
    for name, value in cache.past_feeds(1).items():  # the whole buffers, seqlens_k, total
        inputs[name] = value.numpy() if isinstance(value, HostArray) else np.asarray(value)
    for name, array in inputs.items():
        binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    for name, target in cache.slot_targets(1).items():
        array = target.numpy()
        binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    binding.bind_output("logits")
    session.run_with_iobinding(binding)
    logits = binding.get_outputs()[-1].numpy()
    np.testing.assert_allclose(logits, expected["logits"], **logits_close)
    names = [
        *(f"present_key.{j}" for j in range(layers)),
        *(f"present_value.{j}" for j in range(layers)),
    ]
    scratch_written = False
    for name, buffer, old in zip(names, [*cache.keys, *cache.values], before, strict=True):
        rows = buffer.numpy()
        new = expected[name].transpose(0, 2, 1, 3)  # [1, kvh, 1, hd]
        np.testing.assert_allclose(rows[:, :, past : past + 1], new, **close)
        np.testing.assert_array_equal(rows[:, :, :past], old[:, :, :past])
        after = past + 1 + spare  # the scratch rows end here; the rest is untouched
        np.testing.assert_array_equal(rows[:, :, after:], old[:, :, after:])
        scratch_written |= not np.array_equal(
            rows[:, :, past + 1 : after], old[:, :, past + 1 : after]
        )
    return scratch_written


@pytest.mark.parametrize(("past", "shift"), [(0, 0), (9, 0), (9, 3), (511, 0)])
def test_a_decode_step_in_query_rows_matches_the_exported_graph_in_place(
    graphs, past: int, shift: int
) -> None:
    """Every decode step grouped (``grouped_from_past=0``): the same logits and new K/V as
    the exported graph; only the token's row and the scratch rows after it change. 511:
    the last position of the embedded model's context, its scratch rows in the spare ones."""
    plain, fused, _, manifest = graphs
    assert past < manifest.limits["max_context"]
    heads = AttentionHeads.from_manifest(manifest)
    assert spare_rows(heads) == heads.num_heads // heads.num_kv_heads - 1 > 0
    assert _decode_in_place(plain, fused, manifest, past, shift)


def test_decode_steps_group_their_queries_only_from_the_threshold(graphs) -> None:
    """Below ``grouped_from_past`` cached positions the op runs as it was (no scratch row
    written); from it on, grouped. Both compute what the exported graph does."""
    plain, _, _, manifest = graphs
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    heads = AttentionHeads.from_manifest(manifest)
    fuse_for_onnx_runtime(fused, rope_tables(manifest), heads, grouped_from_past=8)
    assert not _decode_in_place(plain, fused, manifest, 7, 0)
    assert _decode_in_place(plain, fused, manifest, 8, 0)


def test_spare_rows_lie_beyond_the_capacity_in_both_constructors() -> None:
    cache = KVCache.empty(2, 16, 2, 4, head_major=True, spare_rows=3)
    assert cache.keys[0].shape == (1, 2, 19, 4) and cache.capacity == 16
    cache.advance(15)
    cache.slot_targets(1)  # the last position: its scratch rows still fit
    with pytest.raises(ValueError, match="KV cache full"):
        cache.slot_targets(2)
    keys = [np.ones((1, 6, 2, 4), np.float32)] * 2
    restored = cache_from_prefix(keys, keys, 10, HostArray, head_major=True, spare_rows=3)
    assert restored.keys[1].shape == (1, 2, 13, 4) and restored.capacity == 10
    assert restored.length == 6
    flat = cache_from_prefix(keys, keys, 10, HostArray, head_major=False, spare_rows=3)
    assert flat.keys[0].shape == (1, 10, 2, 4) and flat.capacity == 10


def test_a_prefix_of_another_type_is_converted_to_the_caches() -> None:
    """A video state saved from a float32 cache restores into a float16 one, and back."""
    keys = [np.full((1, 6, 2, 4), 1 / 3, np.float32)] * 2
    half = cache_from_prefix(keys, keys, 10, HostArray, True, 6, np.float16)
    assert half.keys[0].dtype == half.values[1].dtype == np.float16
    assert half.keys[0].numpy()[0, 1, 5, 0] == np.float16(1 / 3)
    back, _ = half.prefix_arrays()
    restored = cache_from_prefix(back, back, 10, HostArray, True, 6, np.float32)
    assert restored.keys[0].dtype == np.float32


@pytest.fixture(scope="module")
def half_cache_graph(graphs) -> onnx.ModelProto:
    """``graphs``' fused graph with a float16 cache, every decode step in query rows."""
    plain, _, _, manifest = graphs
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    heads = AttentionHeads.from_manifest(manifest)
    counts = fuse_for_onnx_runtime(
        fused, rope_tables(manifest), heads, grouped_from_past=0, kv_dtype="float16"
    )
    assert counts["float16_cache"] == counts["group_query_attention"] == heads.num_layers
    return fused


def test_a_float16_cache_graph_has_the_contract_signature(graphs, half_cache_graph) -> None:
    _, _, _, manifest = graphs
    inputs, outputs = shared_kv_specs(manifest, "float16")
    by_name = {v.name: v.type.tensor_type.elem_type for v in half_cache_graph.graph.input}
    by_name |= {v.name: v.type.tensor_type.elem_type for v in half_cache_graph.graph.output}
    for spec in (*inputs, *outputs):
        assert onnx.helper.tensor_dtype_to_np_dtype(by_name[spec.name]) == np.dtype(spec.dtype)
    assert by_name["past_key.0"] == onnx.TensorProto.FLOAT16
    assert by_name["logits"] == by_name["visual_embeds"] == onnx.TensorProto.FLOAT


@pytest.mark.parametrize(("past", "shift"), [(0, 0), (9, 3), (511, 0)])
def test_a_float16_cache_decode_step_matches_the_exported_graph(
    graphs, half_cache_graph, past: int, shift: int
) -> None:
    """The float32 graph's logits and new K/V to half precision, in query rows, in place."""
    plain, _, _, manifest = graphs
    assert _decode_in_place(plain, half_cache_graph, manifest, past, shift, np.float16)
