"""Runtime parts that need no exported package: cache, sampling, backends, state files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosslmm_edge.runtime.backends.base import HostArray, open_backend, resolve_provider
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.inference.kv_cache import KVCache, cache_from_prefix
from crosslmm_edge.runtime.inference.sampling import Sampler, log_softmax
from crosslmm_edge.runtime.video.video_state import StateKey, VideoState, load_state, save_state

# -- KV cache ---------------------------------------------------------------


def test_cache_views_are_the_buffer_and_slots_follow_the_prefix() -> None:
    cache = KVCache.empty(num_layers=2, max_len=8, num_kv_heads=2, head_dim=3)
    slots = cache.slot_targets(3)
    slots["present_key.1"].numpy()[...] = 7.0  # what a graph writes in place
    cache.advance(3)
    past = cache.past_feeds(1)["past_key.1"].numpy()
    assert past.shape == (1, 3, 2, 3) and np.all(past == 7.0)
    assert np.shares_memory(past, cache.keys[1].numpy())
    cache.truncate(1)
    assert cache.slot_targets(2)["present_value.0"].numpy().shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="full"):
        cache.slot_targets(8)
    with pytest.raises(ValueError):
        cache.truncate(2)


def test_cache_from_prefix_holds_the_prefix_and_room() -> None:
    rng = np.random.default_rng(0)
    keys = [rng.standard_normal((1, 4, 2, 3)).astype(np.float32) for _ in range(2)]
    values = [rng.standard_normal((1, 4, 2, 3)).astype(np.float32) for _ in range(2)]
    cache = cache_from_prefix(keys, values, max_len=10)
    assert cache.length == 4 and cache.capacity == 10
    got_keys, got_values = cache.prefix_arrays()
    assert all(
        np.array_equal(a, b) for a, b in zip(got_keys + got_values, keys + values, strict=True)
    )


def test_host_array_refuses_non_contiguous_or_batched() -> None:
    with pytest.raises(ValueError):
        HostArray(np.zeros((2, 3, 1, 1)))
    with pytest.raises(ValueError):
        HostArray(np.zeros((1, 4, 2))[:, :, :1])


# -- sampling ---------------------------------------------------------------


def test_greedy_masks_the_video_token_and_reports_unmasked_logprob() -> None:
    logits = np.array([0.0, 5.0, 3.0, -1.0], dtype=np.float32)
    token, logprob = Sampler(banned_ids=[1]).choose(logits)
    assert token == 2
    assert logprob == pytest.approx(float(log_softmax(logits)[2]))


def test_sampling_is_seeded_and_respects_top_k_and_top_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    draws = [Sampler(temperature=1.0, seed=3).choose(logits)[0] for _ in range(2)]
    assert draws[0] == draws[1]
    top_k = Sampler(temperature=1.0, top_k=2, seed=0)
    assert {top_k.choose(logits)[0] for _ in range(200)} == {0, 1}
    top_p = Sampler(temperature=1.0, top_p=0.6, seed=0)  # 0.5 then 0.3 reaches 0.6
    assert {top_p.choose(logits)[0] for _ in range(200)} == {0, 1}
    spread = Sampler(temperature=1.0, seed=0)
    counts = np.bincount([spread.choose(logits)[0] for _ in range(2000)], minlength=4)
    assert np.allclose(counts / 2000, [0.5, 0.3, 0.15, 0.05], atol=0.04)


# -- backends ---------------------------------------------------------------


def test_provider_names_resolve_and_auto_prefers_cuda(monkeypatch) -> None:
    from crosslmm_edge.runtime.backends import base as backends

    assert resolve_provider("cpu") == "cpu"
    assert resolve_provider("CPUExecutionProvider") == "cpu"
    monkeypatch.setattr(backends, "available_providers", lambda: ["cpu"])
    assert resolve_provider(None) == "cpu"
    monkeypatch.setattr(backends, "available_providers", lambda: ["cuda", "tensorrt", "cpu"])
    assert resolve_provider(None) == "cuda"  # TensorRT only when asked: engine builds take minutes
    assert resolve_provider("trt") == "tensorrt"


class FakeCudaValue:
    """Stands in for an ``OrtValue`` in CUDA memory: a host buffer and its address."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def numpy(self) -> np.ndarray:
        return self.array.copy()


def test_device_array_rows_address_the_right_elements() -> None:
    from crosslmm_edge.runtime.backends.ort_backend import OrtDeviceArray

    cache = np.arange(1 * 6 * 2 * 3, dtype=np.float32).reshape(1, 6, 2, 3)  # [1, len, kvh, hd]
    device = OrtDeviceArray(FakeCudaValue(cache), cache.shape, cache.dtype)
    rows = device.rows(2, 5)
    assert rows.shape == (1, 3, 2, 3)
    assert np.array_equal(rows.numpy(), cache[:, 2:5])
    assert rows.pointer == cache[:, 2:].ctypes.data  # what a binding hands the graph
    assert np.array_equal(rows.rows(1, 2).numpy(), cache[:, 3:4])


def test_unknown_provider_names_the_available_ones() -> None:
    with pytest.raises(UserError, match=r"'warp-drive' is unknown; available: .*cpu"):
        open_backend("onnx", "warp-drive")


def test_cpu_backend_runs_a_graph_writing_outputs_in_place(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "n", 2])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])],
        "g",
        [x],
        [y, z],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "g.onnx")
    session = open_backend("onnx", "cpu").load(tmp_path / "g.onnx", "g")
    assert list(session.inputs) == ["x"] and session.outputs["y"].dims == (1, "n", 2)
    buffer = HostArray(np.zeros((1, 5, 2), dtype=np.float32))
    feed = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    out = session.run({"x": feed}, write_to={"y": buffer.rows(1, 3)})
    assert list(out) == ["z"] and np.array_equal(out["z"], -feed)
    assert np.array_equal(buffer.array[:, 1:3], 2 * feed) and not buffer.array[:, [0, 3, 4]].any()


def test_unloadable_graph_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match=r"bad\.onnx"):
        open_backend("onnx", "cpu").load(tmp_path / "bad.onnx", "llm")


# -- video state files ------------------------------------------------------


def _state(key: StateKey) -> VideoState:
    rng = np.random.default_rng(1)
    cache = [rng.standard_normal((1, 6, 2, 3)).astype(np.float32) for _ in range(2)]
    return VideoState(
        key,
        2,
        rng.standard_normal((1, 8, 5)).astype(np.float32),
        {"t2v_key.0": rng.standard_normal((1, 32, 2, 3)).astype(np.float32)},
        prefix_ids=[3, 4],
        prefix_keys=cache,
        prefix_values=cache[::-1],
    )


def test_state_round_trips_and_refuses_other_keys(tmp_path: Path) -> None:
    key = StateKey("a" * 64, 8, 16, "onnx/fp32", "b" * 64)
    path = tmp_path / "state.npz"
    save_state(_state(key), path)
    loaded = load_state(path, key)
    original = _state(key)
    assert loaded.prefix_ids == [3, 4] and loaded.num_frames == 2
    assert np.array_equal(loaded.visual_embeds, original.visual_embeds)
    assert np.array_equal(loaded.cross["t2v_key.0"], original.cross["t2v_key.0"])
    assert np.array_equal(loaded.prefix_values[0], original.prefix_values[0])
    for other, field in [
        (StateKey("c" * 64, 8, 16, "onnx/fp32", "b" * 64), "video_sha256 differs"),
        (StateKey("a" * 64, 4, 16, "onnx/fp32", "b" * 64), "num_frames differs"),
        (StateKey("a" * 64, 8, 16, "onnx/fp32", "d" * 64), "artifact files differ"),
        (StateKey("a" * 64, 8, 16, "onnx/fp16", "d" * 64), "made with onnx/fp32, this run"),
    ]:
        with pytest.raises(UserError, match=field):
            load_state(path, other)
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no temp file left


def test_bad_state_files_are_user_errors(tmp_path: Path) -> None:
    key = StateKey("a" * 64, 8, 16, "onnx/fp32", "b" * 64)
    with pytest.raises(UserError, match="not found"):
        load_state(tmp_path / "missing.npz", key)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"junk\.npz"):
        load_state(tmp_path / "junk.npz", key)
    save_state(_state(key), tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.npz"):
        load_state(tmp_path / "cut.npz", key)
    with pytest.raises(UserError, match="no folder"):
        save_state(_state(key), tmp_path / "missing" / "state.npz")
