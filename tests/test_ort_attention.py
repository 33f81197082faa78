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
    counts = fuse_for_onnx_runtime(
        fused, rope_tables(manifest), AttentionHeads.from_manifest(manifest)
    )
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


def test_every_decoder_layer_becomes_one_group_query_attention(graphs) -> None:
    plain, fused, counts, manifest = graphs
    layers = AttentionHeads.from_manifest(manifest).num_layers
    ops = Counter(n.op_type for n in fused.graph.node)
    assert counts["group_query_attention"] == ops["GroupQueryAttention"] == layers
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
