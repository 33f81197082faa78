"""The per-user cache of ONNX Runtime's optimized graphs (runtime/backends/ort_cache.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosslmm_edge.runtime.backends import ort_cache
from crosslmm_edge.runtime.backends.ort_backend import OrtBackend
from crosslmm_edge.runtime.backends.ort_cache import OptimizedGraphCache, cache_key

CHECKED = ["a" * 64, "b" * 64]  # stands for the manifest hashes the package checked


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    """x [1, 32] @ W [32, 32] + b, then Relu: constant weights and a fusible pattern."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [weight, bias]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "g.onnx")
    return tmp_path / "g.onnx"


def _run(backend: OrtBackend, graph: Path, sha256=CHECKED) -> np.ndarray:
    session = backend.load(graph, "g", sha256=sha256)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    return session.run({"x": x})["y"].copy()


def _entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if not p.name.startswith(".")]


def test_second_load_uses_the_entry_and_answers_the_same(graph: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = OrtBackend("cpu", cache=OptimizedGraphCache(root))
    want = _run(first, graph)
    assert first.loaded_from == {"g": "optimized"}
    (entry,) = _entries(root)
    assert {p.name for p in entry.iterdir()} == {"graph.onnx", "graph.onnx.data", "record.json"}
    assert oct(entry.stat().st_mode & 0o777) == "0o700"
    again = OrtBackend("cpu", cache=OptimizedGraphCache(root))
    got = _run(again, graph)
    assert again.loaded_from == {"g": "cache"} and np.array_equal(got, want)
    plain = OrtBackend("cpu", cache=OptimizedGraphCache(None))
    assert np.array_equal(_run(plain, graph), want) and plain.loaded_from == {"g": "plain"}


def test_unchecked_graphs_are_never_cached(graph: Path, tmp_path: Path) -> None:
    backend = OrtBackend("cpu", cache=OptimizedGraphCache(tmp_path / "cache"))
    _run(backend, graph, sha256=())
    assert backend.loaded_from == {"g": "plain"} and not (tmp_path / "cache").exists()


def test_a_changed_entry_is_a_miss_and_is_rewritten(graph: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    want = _run(OrtBackend("cpu", cache=OptimizedGraphCache(root)), graph)
    (entry,) = _entries(root)
    data = entry / "graph.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[:4] = b"\0\0\0\0"  # same size, different weights
    data.write_bytes(bytes(raw))
    backend = OrtBackend("cpu", cache=OptimizedGraphCache(root))
    assert np.array_equal(_run(backend, graph), want)
    assert backend.loaded_from == {"g": "optimized"}
    assert OptimizedGraphCache(root).lookup(entry.name) == entry / "graph.onnx"


def test_an_entry_others_may_write_is_ignored(graph: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _run(OrtBackend("cpu", cache=OptimizedGraphCache(root)), graph)
    (entry,) = _entries(root)
    entry.chmod(0o777)
    assert OptimizedGraphCache(root).lookup(entry.name) is None
    entry.chmod(0o700)
    assert OptimizedGraphCache(root).lookup(entry.name) is not None
    root.chmod(0o777)
    assert OptimizedGraphCache(root).lookup(entry.name) is None


def test_the_key_covers_what_the_optimized_graph_depends_on() -> None:
    here = ort_cache.processor_id()
    base = cache_key(CHECKED, "cpu", "1.32.0", [], here)
    assert base == cache_key(CHECKED, "cpu", "1.32.0", [], here)
    assert base == OptimizedGraphCache(None).key(CHECKED, "cpu", "1.32.0", [])
    others = [
        cache_key(CHECKED[:1], "cpu", "1.32.0", [], here),
        cache_key(CHECKED, "cuda", "1.32.0", [], here),
        cache_key(CHECKED, "cpu", "1.23.2", [], here),
        cache_key(CHECKED, "cpu", "1.32.0", ["MatmulTransposeFusion"], here),
        cache_key(CHECKED, "cpu", "1.32.0", [], here + " another CPU"),
    ]
    assert base not in others and len(set(others)) == len(others)
    assert "flags" in ort_cache.processor_id() or "Features" in ort_cache.processor_id()


def test_litter_of_a_killed_run_goes_and_old_entries_are_evicted(
    graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    dead = root / ".abc.tmp-999999999"  # no such process
    dead.mkdir()
    monkeypatch.setattr(ort_cache, "MAX_ENTRIES", 2)
    for n in range(3):
        _run(OrtBackend("cpu", cache=OptimizedGraphCache(root)), graph, sha256=[f"{n:064d}"])
        oldest = min(_entries(root), key=lambda p: (p / "record.json").stat().st_mtime_ns)
        os.utime(oldest / "record.json", ns=(1, 1))  # make the order unambiguous
    assert not dead.exists() and len(_entries(root)) == 2


def test_a_cache_that_cannot_be_written_never_stops_loading(
    graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = OptimizedGraphCache(tmp_path / "cache")
    monkeypatch.setattr(cache, "staging", lambda key: tmp_path / "missing" / "folder")
    backend = OrtBackend("cpu", cache=cache)
    got = _run(backend, graph)
    assert backend.loaded_from == {"g": "plain"} and not (tmp_path / "cache").exists()
    assert np.array_equal(got, _run(OrtBackend("cpu", cache=OptimizedGraphCache(None)), graph))
