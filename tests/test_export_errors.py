"""Bad input to ``export`` ends in one ``error:`` line, exit 2, and no partial package."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from tiny_models import save_tiny_checkpoint, tiny_config

import crosslmm_edge.export.graphs.package as package
from crosslmm_edge.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    return save_tiny_checkpoint(root / "ckpt", tiny_config(layers=2, dcal_every=2))


def _export(checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["export", str(checkpoint), "--out", str(out), *extra])


def _error_line(capsys) -> str:
    """The one ``error:`` line, last on stderr (after any progress lines), no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err)
    return errors[0]


def _fake_export_graph(module, spec, example_sizes, vocab_size, path: Path) -> list[Path]:
    """Writes a stand-in graph file instantly (these tests are about the package, not ONNX)."""
    path.write_bytes(b"onnx stand-in for " + spec.role.encode())
    return [path]


def test_a_checkpoint_that_is_not_crosslmm(tmp_path, capsys):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    assert _export(folder, tmp_path / "out" / "pkg") == 2
    line = _error_line(capsys)
    assert str(folder / "config.json") in line and "qwen2" in line
    assert not (tmp_path / "out" / "pkg").exists()


def test_config_sizes_that_disagree_with_the_weights(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in checkpoint.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 2
    (bad / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out" / "pkg"
    assert _export(bad, out) == 2
    line = _error_line(capsys)
    assert "model.safetensors" in line and "mlp" in line and "shape" in line
    assert list(out.parent.iterdir()) == []


def test_an_existing_output_folder_is_refused_without_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export(checkpoint, out) == 2
    line = _error_line(capsys)
    assert str(out) in line and "--force" in line
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_an_existing_package(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(package, "export_graph", _fake_export_graph)
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "manifest.json").write_text("{}")  # --force replaces only a package folder
    assert _export(checkpoint, out, "--force") == 0
    assert not (out / "old.txt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["llm"]["artifacts"][0]["file"] == "llm.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_disk_full_mid_write_leaves_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    calls = []

    def fill_disk(module, spec, example_sizes, vocab_size, path: Path) -> list[Path]:
        calls.append(spec.role)
        if len(calls) == 2:  # the second graph runs out of space half-way
            path.write_bytes(b"half a graph")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return _fake_export_graph(module, spec, example_sizes, vocab_size, path)

    monkeypatch.setattr(package, "export_graph", fill_disk)
    out = tmp_path / "out" / "pkg"
    assert _export(checkpoint, out) == 2
    line = _error_line(capsys)
    assert str(out) in line and "No space left on device" in line
    assert list(out.parent.iterdir()) == []


def test_disk_full_with_force_keeps_the_old_package(checkpoint, tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(package, "export_graph", _fake_export_graph)
    monkeypatch.setattr(package.shutil, "copyfile", no_space)  # fails after the graphs
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "manifest.json").write_text("old package")
    assert _export(checkpoint, out, "--force") == 2
    assert "No space left" in _error_line(capsys)
    assert (out / "manifest.json").read_text() == "old package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_interrupt_mid_export_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(package, "export_graph", interrupted)
    out = tmp_path / "out" / "pkg"
    assert _export(checkpoint, out) == 130
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--max-frames", "0"], "--max-frames 0"),
        (["--max-context", "8"], "--max-context 8"),
        (["--max-context", "100000"], "max_position_embeddings"),
    ],
)
def test_bad_limits(checkpoint, tmp_path, capsys, option, words):
    assert _export(checkpoint, tmp_path / "pkg", *option) == 2
    assert words in _error_line(capsys)
    assert not (tmp_path / "pkg").exists()


def test_a_missing_checkpoint_folder(tmp_path, capsys):
    assert _export(tmp_path / "nowhere", tmp_path / "pkg") == 2
    assert str(tmp_path / "nowhere") in _error_line(capsys)


def test_an_output_folder_that_is_the_checkpoint_is_refused(checkpoint, capsys):
    assert _export(checkpoint, checkpoint, "--force") == 2
    assert "would replace the checkpoint" in _error_line(capsys)
    assert (checkpoint / "model.safetensors").is_file()


@pytest.fixture
def fake_package(checkpoint, tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(package, "export_graph", _fake_export_graph)
    package.export_package(checkpoint, tmp_path / "pkg")
    return tmp_path / "pkg"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda pkg: (pkg / "manifest.json").unlink(), "not found"),
        (lambda pkg: (pkg / "manifest.json").write_text("{oops"), "not valid JSON"),
        (lambda pkg: _edit_manifest(pkg, format_version=99), "format_version 99"),
        (lambda pkg: _edit_manifest(pkg, format_version=1), "re-export it"),
        (lambda pkg: _edit_manifest(pkg, graphs={}), "missing"),
        (lambda pkg: (pkg / "llm.onnx").unlink(), "llm.onnx"),
        (lambda pkg: _edit_manifest(pkg, limits="none"), "malformed"),
    ],
)
def test_load_manifest_names_what_is_wrong(fake_package, damage, words):
    from crosslmm_edge.runtime.errors import UserError
    from crosslmm_edge.runtime.package.manifest import load_manifest

    load_manifest(fake_package)  # intact first
    damage(fake_package)
    with pytest.raises(UserError, match=words) as info:
        load_manifest(fake_package)
    assert str(fake_package) in str(info.value)


def _edit_manifest(pkg: Path, **changes) -> None:
    data = json.loads((pkg / "manifest.json").read_text())
    data.update(changes)
    (pkg / "manifest.json").write_text(json.dumps(data))
