"""Property-based fuzzing of every parser of files we do not control.

Manifest, model config, checkpoint index, video-state file, safetensors
header and ONNX external-data references: a hostile input either parses into
something within bounds or raises ``UserError`` (``ValueError`` for the pure
header parser). Any other exception is a bug.

Bounded in CI: ``CROSSLMM_FUZZ_EXAMPLES`` examples per parser (default 40).
A longer run: ``CROSSLMM_FUZZ_EXAMPLES=5000 python3 -m pytest -q
tests/test_fuzz_parsers.py --hypothesis-show-statistics``. With
``CROSSLMM_FUZZ_LOG=FILE`` every input tried is appended to FILE as one JSON
line (parser, outcome, input); hypothesis keeps failing examples in
``.pytest_cache/hypothesis``.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.model.config import CrossLMMConfig
from crosslmm_edge.runtime.model.contract import ExportLimits, ModelDims, graph_specs
from crosslmm_edge.runtime.model.limits import CONFIG_BOUNDS
from crosslmm_edge.runtime.package.hash_cache import HashCache
from crosslmm_edge.runtime.package.loader import ModelPackage
from crosslmm_edge.runtime.package.manifest import load_manifest
from crosslmm_edge.runtime.video.state_file import StateSpec
from crosslmm_edge.runtime.video.video_state import StateKey, VideoState, load_state, save_state
from tests.trust_helpers import json_paths, mutate, npz_bytes

EXAMPLES = int(os.environ.get("CROSSLMM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=DirectoryBasedExampleDatabase(".pytest_cache/hypothesis"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 10**12, 10**9, 2**63, 2**64 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "..", "../x", "/etc/passwd", "a/../../b", "nan", "\x00", "llm.onnx"]),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def record(parser: str, outcome: str, data: Any) -> None:
    """Append one tried input to ``$CROSSLMM_FUZZ_LOG`` (when set)."""
    log = os.environ.get("CROSSLMM_FUZZ_LOG")
    if log:
        with open(log, "a") as handle:
            line = {"parser": parser, "outcome": outcome, "input": repr(data)[:300]}
            handle.write(json.dumps(line) + "\n")


def outcome(parser: str, parse, data: Any) -> Any:
    """``parse()``'s result, or None when it refused with ``UserError``; recorded either way."""
    try:
        result = parse()
    except UserError:
        record(parser, "refused", data)
        return None
    record(parser, "accepted", data)
    return result


def _embedded_config() -> dict:
    return json.loads((embedded_model_dir() / "config.json").read_text())


# -- manifest ------------------------------------------------------------------


def _manifest_dict() -> dict:
    config = CrossLMMConfig.from_dict(_embedded_config())
    specs = graph_specs(config, ExportLimits(8, 512))
    graphs = {}
    for role, spec in specs.items():
        art = {"backend": "onnx", "precision": "fp32", "file": f"{role}.onnx", "sha256": "0" * 64}
        art |= {"external_data": [], "build": {}}
        art |= {"inputs": [t.to_dict() for t in spec.inputs]}
        art |= {"outputs": [t.to_dict() for t in spec.outputs]}
        dims = {d.name: {"min": d.min, "max": d.max, "expr": d.expr} for d in spec.dims}
        graphs[role] = {"dims": dims, "artifacts": [art]}
    files = {"config": "config.json", "generation_config": None, "tokenizer": []}
    return {
        "format_version": 2,
        "source": {},
        "model_config": config.to_dict(),
        "limits": {"max_frames": 8, "max_context": 512},
        "files": files | {"sha256": {"config.json": "0" * 64}},
        "graphs": graphs,
    }


@pytest.fixture(scope="module")
def manifest_base() -> tuple[dict, list[tuple]]:
    data = _manifest_dict()
    return data, json_paths(data)


@FUZZ
@given(data=st.data(), value=HOSTILE, delete=st.booleans())
def test_fuzz_manifest(manifest_base, tmp_path_factory, data, value, delete):
    base, paths = manifest_base
    path = data.draw(st.sampled_from(paths))
    mutated = mutate(base, path, value, delete)
    pkg = tmp_path_factory.mktemp("pkg")
    for name in ("vision_encoder.onnx", "pooling.onnx", "llm.onnx", "config.json"):
        (pkg / name).write_bytes(b"")
    (pkg / "manifest.json").write_text(json.dumps(mutated))
    opened = outcome(
        "manifest",
        lambda: ModelPackage(pkg, load_manifest(pkg), HashCache(None)).verify_all() or True,
        (path, value, delete),
    )
    assert opened is None  # every file is empty: a hash can never match


# -- model config ----------------------------------------------------------------


@FUZZ
@given(data=st.data(), value=HOSTILE, delete=st.booleans())
def test_fuzz_config(data, value, delete):
    base = _embedded_config()
    path = data.draw(st.sampled_from(json_paths(base)))
    mutated = mutate(base, path, value, delete)
    config = outcome("config", lambda: CrossLMMConfig.from_dict(mutated), (path, value, delete))
    if config is None:
        return
    t, v = config.text_config, config.vision_config
    sizes = [t.num_hidden_layers, t.num_key_value_heads, t.hidden_size, v.hidden_size]
    assert all(isinstance(s, int) and 1 <= s <= max(CONFIG_BOUNDS.values()) for s in sizes)
    assert math.isfinite(t.rope_theta) and t.rope_theta > 0


# -- checkpoint index -------------------------------------------------------------


@FUZZ
@given(weight_map=st.one_of(HOSTILE, st.dictionaries(st.text(max_size=8), HOSTILE, max_size=4)))
def test_fuzz_checkpoint_index(tmp_path_factory, weight_map):
    from crosslmm_edge.export.checkpoint import weight_files

    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "llm.onnx").write_bytes(b"")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    found = outcome("index", lambda: weight_files(folder), weight_map) or []
    assert all(p.parent == folder and p.is_file() for p in found)


# -- safetensors header ------------------------------------------------------------

TENSOR = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "I64", "X9"]),
        "shape": HOSTILE,
        "data_offsets": HOSTILE,
    }
)


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=6), st.one_of(TENSOR, HOSTILE), max_size=4),
    tail=st.binary(max_size=64),
    cut=st.integers(min_value=0, max_value=12),
)
def test_fuzz_safetensors_header(tmp_path_factory, header, tail, cut):
    from crosslmm_edge.export.safetensors_header import check_safetensors

    raw = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes((len(raw) + cut).to_bytes(8, "little") + raw + tail)
    found = outcome("safetensors", lambda: check_safetensors(path), header) or {}
    assert all(isinstance(shape, tuple) for _, shape in found.values())


# -- ONNX external-data references -------------------------------------------------


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w.data")
    node = helper.make_node("Add", ["x", "w"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([node], "g", [x], [y], [weight])
    return helper.make_model(graph).SerializeToString()


@FUZZ
@given(data=st.data())
def test_fuzz_onnx_external_data(tmp_path_factory, data):
    from crosslmm_edge.runtime.package.onnx_refs import external_data_locations

    raw = bytearray(_tiny_onnx())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("onnx") / "g.onnx"
    path.write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw)))]))
    found = outcome("onnx", lambda: external_data_locations(path), bytes(raw)[:64]) or set()
    assert all(isinstance(name, str) for name in found)


# -- video-state file ---------------------------------------------------------------

STATE_CONFIG = {
    "text_config": {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "vocab_size": 32, "intermediate_size": 8},
    "vision_config": {"image_size": 8, "patch_size": 4, "hidden_size": 4,
                      "num_attention_heads": 1, "intermediate_size": 4, "num_hidden_layers": 1},
    "pooled_grid": 1, "dcal_every": 2, "num_frames": 2, "video_token_id": 3,
}  # fmt: skip
KEY = StateKey("a" * 64, 2, 8, "onnx/fp32", "b" * 64)


@pytest.fixture(scope="module")
def state_base(tmp_path_factory) -> tuple[bytes, StateSpec]:
    dims = ModelDims.from_config(CrossLMMConfig.from_dict(STATE_CONFIG))
    dtypes = {"visual_embeds": "float32", "past_key.0": "float32", "t2v_key.0": "float32"}
    dtypes |= {"t2v_value.0": "float32"}
    spec = StateSpec(dims, dtypes, max_frames=2, max_context=64)
    rng = np.random.default_rng(0)
    kv = (dims.num_kv_heads, dims.head_dim)
    length = 3 + 2 * dims.tokens_per_frame
    cross = {n: rng.standard_normal((1, 2 * dims.patches_per_frame, *kv)).astype(np.float32)
             for n in ("t2v_key.0", "t2v_value.0")}  # fmt: skip
    cache = [rng.standard_normal((1, length, *kv)).astype(np.float32) for _ in range(2)]
    state = VideoState(KEY, 2, np.zeros((1, 2, 8), np.float32), cross, [1, 2, 3], cache, cache)
    path = tmp_path_factory.mktemp("state") / "good.npz"
    save_state(state, path)
    load_state(path, KEY, spec)  # the unmutated file is a good state
    return path.read_bytes(), spec


def _restructure(raw: bytes, data) -> bytes:
    """Rewrite one member: another dtype, byte order, shape or contents."""
    with np.load(io.BytesIO(raw)) as loaded:
        members = {name: loaded[name] for name in loaded.files}
    name = data.draw(st.sampled_from(sorted(set(members) - {"meta"})))
    change = data.draw(st.sampled_from(["dtype", "endian", "shape", "nan", "drop", "meta"]))
    value = members[name]
    if change == "dtype":
        members[name] = value.astype(data.draw(st.sampled_from(["f8", "f2", "i4", "u1"])))
    elif change == "endian":
        members[name] = value.astype(value.dtype.newbyteorder(">"))
    elif change == "shape":
        members[name] = value.reshape(-1)[: data.draw(st.integers(0, value.size))]
    elif change == "nan" and value.dtype.kind == "f":
        members[name] = value * np.nan
    elif change == "drop":
        del members[name]
    else:
        meta = json.loads(str(members["meta"]))
        field = data.draw(st.sampled_from(sorted(meta)))
        meta[field] = data.draw(HOSTILE)
        members["meta"] = np.array(json.dumps(meta))
    return npz_bytes(members)


@FUZZ
@given(data=st.data())
def test_fuzz_state_file(state_base, tmp_path_factory, data):
    raw, spec = state_base
    if data.draw(st.booleans()):
        raw = _restructure(raw, data)
    else:
        mutable = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            mutable[data.draw(st.integers(0, len(mutable) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(mutable[: data.draw(st.integers(0, len(mutable)))])
    path = tmp_path_factory.mktemp("state") / "s.npz"
    path.write_bytes(raw)
    state = outcome("state", lambda: load_state(path, KEY, spec), len(raw))
    if state is None:
        return
    assert state.visual_embeds.dtype == np.float32 and np.isfinite(state.visual_embeds).all()
    assert all(k.shape == state.prefix_keys[0].shape for k in state.prefix_keys)


def test_fuzz_log_is_written_when_asked(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CROSSLMM_FUZZ_LOG", str(tmp_path / "log.jsonl"))
    record("manifest", "refused", {"x": 1})
    assert json.loads((tmp_path / "log.jsonl").read_text())["outcome"] == "refused"
