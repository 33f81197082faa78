"""`plan`: memory predictions from a config or package, torch-free."""

from __future__ import annotations

import json

import pytest

from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.model.config import CrossLMMConfig
from crosslmm_edge.runtime.planner.memory_fit import Model, largest_frames, predict_cpu, predictor
from crosslmm_edge.runtime.planner.memory_plan import GIB, Shapes, parameter_counts


def _plan(capsys, *args: str) -> dict:
    assert main(["plan", "--model", str(embedded_model_dir()), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_cpu_plan_of_the_embedded_model(capsys):
    small, large = (_plan(capsys, "--device", "cpu", "--frames", f) for f in ("8", "32"))
    assert {"peak_bytes", "fits", "max_frames"} <= set(small)
    assert small["fits"] and 0 < small["peak_bytes"] < large["peak_bytes"] < 1 * GIB


def test_parameter_count_matches_the_checkpoint():
    """The formula against the embedded model's safetensors (the weights export ships)."""
    folder = embedded_model_dir()
    config = CrossLMMConfig.from_dict(json.loads((folder / "config.json").read_text()))
    counted = sum(sum(c.values()) for c in parameter_counts(Shapes.from_config(config)).values())
    header = (folder / "model.safetensors").read_bytes()
    size = int.from_bytes(header[:8], "little")
    tensors = json.loads(header[8 : 8 + size])
    stored = sum(
        (t["data_offsets"][1] - t["data_offsets"][0]) // 4
        for name, t in tensors.items()
        if name != "__metadata__"
    )
    assert abs(counted - stored) / stored < 0.05


def test_jetson_fits_more_frames_with_more_memory_and_int8():
    config = CrossLMMConfig.from_dict(
        json.loads((embedded_model_dir() / "config.json").read_text())
    )
    model = Model(config, {})
    frames = {
        (device, precision): largest_frames(model, predictor(model, device, precision, 0), 400)
        for device in ("orin-nano-8gb", "agx-orin-64gb")
        for precision in ("fp16", "int8")
    }
    assert frames[("orin-nano-8gb", "fp16")] <= frames[("agx-orin-64gb", "fp16")]
    assert frames[("orin-nano-8gb", "fp16")] <= frames[("orin-nano-8gb", "int8")]
    assert predict_cpu(model, 8, 512, "fp32").peak > 0


def test_bad_device_and_frames_are_refused(capsys):
    assert (
        main(["plan", "--model", str(embedded_model_dir()), "--device", "tx2", "--frames", "8"])
        == 2
    )
    assert "--device 'tx2'" in capsys.readouterr().err
    assert (
        main(["plan", "--model", str(embedded_model_dir()), "--device", "cpu", "--frames", "900"])
        == 2
    )


@pytest.mark.parametrize("device", ["orin-nano-8gb", "rtx-4090-24gb"])
def test_gpu_plan_has_every_part(capsys, device):
    out = _plan(capsys, "--device", device, "--frames", "8", "--precision", "int8")
    assert {"weights", "KV cache", "cross K/V", "activations", "workspace"} <= set(out["parts"])
