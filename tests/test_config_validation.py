"""Configs and files a user can get wrong end in UserError, never a crash later."""

import json
from pathlib import Path

import numpy as np
import pytest

from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.inference.sampling import Sampler
from crosslmm_edge.runtime.model.config import CrossLMMConfig

BAD_CONFIGS = {
    "zero heads": {"text_config": {"num_attention_heads": 0}},
    "zero kv heads": {"text_config": {"num_key_value_heads": 0}},
    "vision config not an object": {"vision_config": [1]},
    "feature layer outside the tower": {"vision_feature_layer": -100},
    "no DCAL placed": {"dcal_every": 50},
    "no frames": {"num_frames": 0},
    "unsupported vision activation": {"vision_config": {"hidden_act": "quick_gelu"}},
    "text activation not silu": {"text_config": {"hidden_act": "gelu"}},
    "grid larger than the patch grid": {"pooled_grid": 99},
    "scaled RoPE": {"text_config": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}},
    "sliding window": {"text_config": {"use_sliding_window": True}},
}


def _embedded_config() -> dict:
    return json.loads((embedded_model_dir() / "config.json").read_text())


@pytest.mark.parametrize("change", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configs_are_refused(change):
    data = _embedded_config()
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    with pytest.raises(UserError, match="invalid CrossLMM config"):
        CrossLMMConfig.from_dict(data)


def test_the_embedded_config_is_valid():
    assert CrossLMMConfig.from_dict(_embedded_config()).num_dcal >= 1


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "/abs/model.safetensors", 5])
def test_an_index_cannot_name_files_outside_its_folder(tmp_path: Path, shard):
    from crosslmm_edge.export.checkpoint import weight_files

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(UserError, match="not a shard file name"):
        weight_files(tmp_path)


def test_lint_trt_refuses_a_corrupt_onnx_file(tmp_path: Path):
    from crosslmm_edge.export.lint_trt import lint_file

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="not a readable ONNX file"):
        lint_file(bad)


def test_a_tiny_temperature_samples_the_top_token_without_overflow():
    logits = np.array([1.0, 30.0, 2.0, -5.0], dtype=np.float32)
    sampler = Sampler(temperature=1e-40, seed=0)
    assert [sampler.choose(logits)[0] for _ in range(5)] == [1] * 5


@pytest.mark.parametrize("settings", [{"temperature": float("nan")}, {"seed": -1}])
def test_sampler_refuses_invalid_settings(settings):
    with pytest.raises(ValueError):
        Sampler(**settings)
