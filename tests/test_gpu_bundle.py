"""The GPU bundle: split into parts under the carry limit, stash, join, every hash checked.

Fake wheels of random bytes stand in for onnxruntime-gpu (the real download is
255 MB and needs the network); the code paths are the ones the GPU machine runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crosslmm_edge.benchmarks import gpu_bundle
from crosslmm_edge.runtime.errors import UserError


@pytest.fixture
def wheels(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "downloads"
    folder.mkdir()
    out = []
    for name, size in (("onnxruntime_gpu-1.31.1-cp312-x.whl", 10_000), ("av-1-cp312-x.whl", 777)):
        (folder / name).write_bytes(os.urandom(size))
        out.append(folder / name)
    return out


def _bundle(tmp_path: Path, wheels: list[Path], part_bytes: int = 3000) -> tuple[Path, dict]:
    carry = tmp_path / "carry"
    carry.mkdir()
    return carry, gpu_bundle.pack(wheels, "3.12", carry, part_bytes)


def test_parts_are_balanced_and_under_the_limit(tmp_path: Path, wheels: list[Path]) -> None:
    carry, manifest = _bundle(tmp_path, wheels)
    sizes = [p["size"] for p in manifest["parts"]]
    assert len(sizes) == -(-manifest["size"] // 3000) and max(sizes) <= 3000
    assert max(sizes) - min(sizes) < len(sizes) and sum(sizes) == manifest["size"]
    assert sorted(f.name for f in carry.iterdir()) == sorted(
        [gpu_bundle.MANIFEST] + [p["file"] for p in manifest["parts"]]
    )
    with pytest.raises(UserError, match="below"):
        gpu_bundle.split_file(wheels[0], gpu_bundle.PART_LIMIT, tmp_path)


def test_stash_then_unpack_gives_the_wheels_back(tmp_path: Path, wheels: list[Path]) -> None:
    carry, manifest = _bundle(tmp_path, wheels)
    stash = tmp_path / "stash"
    first, *rest = manifest["parts"]
    for part in rest:  # the first device run carried only part 1
        os.rename(carry / part["file"], tmp_path / part["file"])
    assert gpu_bundle.stash(carry, stash) == [p["file"] for p in rest]
    with pytest.raises(UserError, match="not carried yet"):
        gpu_bundle.unpack([stash], tmp_path / "wheelhouse")
    for part in rest:  # the later runs carried the others
        os.rename(tmp_path / part["file"], carry / part["file"])
    (carry / first["file"]).unlink()
    assert gpu_bundle.stash(carry, stash) == []
    got = gpu_bundle.unpack([carry, stash], tmp_path / "wheelhouse")
    assert got == manifest
    for wheel in wheels:
        assert (tmp_path / "wheelhouse" / wheel.name).read_bytes() == wheel.read_bytes()
    assert not (tmp_path / "wheelhouse" / gpu_bundle.TAR).exists()


def test_a_damaged_part_is_named_and_nothing_is_joined(tmp_path: Path, wheels: list[Path]) -> None:
    carry, manifest = _bundle(tmp_path, wheels)
    damaged = carry / manifest["parts"][1]["file"]
    data = bytearray(damaged.read_bytes())
    data[5] ^= 1  # same size: only the hash can tell
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match=damaged.name):
        gpu_bundle.unpack([carry], tmp_path / "wheelhouse")
    assert not list((tmp_path / "wheelhouse").iterdir())
    with pytest.raises(UserError, match="damaged in transit"):
        gpu_bundle.stash(carry, tmp_path / "stash")


def test_python_tag_and_cli_errors(tmp_path: Path, capsys) -> None:
    assert gpu_bundle.python_tag("3.12") == "cp312"
    plan = gpu_bundle.device_plan({"parts": [{"file": "bundle.tar.001"}, {"file": "b.002"}]}, "c")
    assert "c/bundle.tar.001" in plan[0] and "gpu_check" not in plan[0]
    assert "c/b.002" in plan[1] and plan[1].endswith(gpu_bundle.CHECK)
    with pytest.raises(UserError, match=r"MAJOR\.MINOR"):
        gpu_bundle.python_tag("312")
    assert gpu_bundle.main(["unpack", "--from", str(tmp_path), "--to", str(tmp_path / "w")]) == 2
    assert "no bundle.json" in capsys.readouterr().err
