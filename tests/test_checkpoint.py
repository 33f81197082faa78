"""Checkpoint folders: round trips, and every bad input named in one ``error:`` line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (  # single_thread: an autouse fixture
    save_tiny_checkpoint,
    tiny_config,
    tiny_model,
)

from crosslmm_edge.cli import main
from crosslmm_edge.export.checkpoints.checkpoint import (
    checkpoint_hash,
    load_checkpoint,
    save_checkpoint,
)
from crosslmm_edge.export.reference.generate import new_cache, prefill, prefill_video_prefix
from crosslmm_edge.runtime.errors import UserError


def _logits(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    size = model.config.vision_config.image_size
    with torch.no_grad():
        video = model.encode_video(torch.randn(2, 3, size, size, generator=gen))
    cache = new_cache(model, 64)
    prefill_video_prefix(model, cache, torch.randint(0, 256, (1, 4), generator=gen), video)
    return prefill(model, cache, torch.randint(0, 256, (1, 5), generator=gen), video.cross)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("shard_bytes", [None, 30_000])
@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_identical_outputs(tmp_path, shard_bytes, tie):
    config = tiny_config(tie=tie, dcal_mlp=not tie)
    model = tiny_model(config, seed=3)
    out = save_checkpoint(model, tmp_path / "ckpt", max_shard_bytes=shard_bytes)
    index = out / "model.safetensors.index.json"
    assert index.is_file() == (shard_bytes is not None)
    if shard_bytes:
        assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    reloaded = load_checkpoint(out)
    assert reloaded.config.to_dict() == model.config.to_dict()
    assert torch.equal(_logits(model), _logits(reloaded))
    assert not list(tmp_path.glob(".ckpt*"))  # no temporary folder left behind


def test_hash_changes_with_weights(tmp_path, saved):
    copy = Path(shutil.copytree(saved, tmp_path / "copy"))
    assert checkpoint_hash(copy) == checkpoint_hash(saved)
    state = load_file(copy / "model.safetensors")
    state["projector.linear_1.bias"] = state["projector.linear_1.bias"] + 1
    save_file(state, copy / "model.safetensors")
    assert checkpoint_hash(copy) != checkpoint_hash(saved)


def test_save_refuses_existing_folder(tmp_path, saved):
    with pytest.raises(UserError, match="already exists"):
        save_checkpoint(load_checkpoint(saved), saved)


def _break_missing_config(folder: Path) -> str:
    (folder / "config.json").unlink()
    return "config.json"


def _break_invalid_json(folder: Path) -> str:
    (folder / "config.json").write_text("{ not json")
    return "config.json"


def _break_not_crosslmm(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "qwen2"
    (folder / "config.json").write_text(json.dumps(config))
    return "config.json"


def _break_truncated(folder: Path) -> str:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "model.safetensors"


def _break_wrong_shape(folder: Path) -> str:
    state = load_file(folder / "model.safetensors")
    state["projector.linear_1.weight"] = torch.zeros(5, 7)
    save_file(state, folder / "model.safetensors")
    return "projector.linear_1.weight"


def _break_missing_key(folder: Path) -> str:
    state = load_file(folder / "model.safetensors")
    del state["dcal.0.t2v_gate"]
    save_file(state, folder / "model.safetensors")
    return "dcal.0.t2v_gate"


def _break_pickle(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded anyway")
    return "pytorch_model.bin"


BREAKS = [
    _break_missing_config,
    _break_invalid_json,
    _break_not_crosslmm,
    _break_truncated,
    _break_wrong_shape,
    _break_missing_key,
    _break_pickle,
]


@pytest.mark.parametrize("breaker", BREAKS, ids=lambda f: f.__name__[7:])
def test_bad_checkpoint_is_a_user_error_naming_the_file(tmp_path, saved, breaker):
    folder = Path(shutil.copytree(saved, tmp_path / "bad"))
    named = breaker(folder)
    with pytest.raises(UserError) as info:
        load_checkpoint(folder)
    assert named in str(info.value)


def test_missing_shard(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "sharded", max_shard_bytes=30_000)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(UserError, match=shard.name):
        load_checkpoint(folder)


def test_wrong_shape_names_file_and_shapes(tmp_path, saved):
    folder = Path(shutil.copytree(saved, tmp_path / "bad"))
    _break_wrong_shape(folder)
    with pytest.raises(UserError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert "model.safetensors" in message and "[5, 7]" in message and "[32, 12]" in message


@pytest.mark.parametrize("breaker", [*BREAKS, "missing_shard"], ids=str)
def test_cli_bad_checkpoint_one_error_line(tmp_path, saved, breaker, capsys):
    if breaker == "missing_shard":
        folder = save_tiny_checkpoint(tmp_path / "bad", max_shard_bytes=30_000)
        shard = sorted(folder.glob("model-*.safetensors"))[-1]
        shard.unlink()
        named = shard.name
    else:
        folder = Path(shutil.copytree(saved, tmp_path / "bad"))
        named = breaker(folder)
    video = tmp_path / "unused.mp4"  # never opened: the checkpoint fails first
    code = main(["ask", str(folder), "--video", str(video), "--question", "q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and named in err[0]
    assert "Traceback" not in err[0]
