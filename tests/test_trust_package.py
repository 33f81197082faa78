"""Loading a package stays inside its folder, checks every file's hash and every graph's role.

Each hostile package is a copy of one exported package with one thing
changed; ``ask`` must refuse it with one ``error:`` line and exit 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.package.loader import open_package
from tests.tiny_models import write_test_video
from tests.trust_helpers import (
    artifact,
    assert_refused,
    copy_package,
    edit_manifest,
    exported_package,
    sha256,
    with_external_data,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return exported_package(tmp_path_factory)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "v.mp4", frames=4, size=32)


@pytest.fixture
def pkg(source: Path, tmp_path: Path) -> Path:
    return copy_package(source, tmp_path / "pkg")


def _ask(capsys, pkg: Path, video: Path, match: str) -> str:
    return assert_refused(capsys, "ask", pkg, "--video", video, "--question", "hi", match=match)


def _move_out(pkg: Path, role: str, name: str) -> Path:
    """Move ``role``'s graph beside the package and point the manifest at ``name``."""
    outside = pkg.parent / "outside-llm.onnx"
    (pkg / f"{role}.onnx").rename(outside)
    edit_manifest(pkg, lambda d: artifact(d, role).update(file=name))
    return outside


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_graph_files_outside_the_package_are_refused(pkg, video, capsys, how):
    outside = _move_out(pkg, "llm", "")
    name = "../outside-llm.onnx" if how == "dotdot" else str(outside)
    edit_manifest(pkg, lambda d: artifact(d, "llm").update(file=name))
    _ask(capsys, pkg, video, "malformed manifest")


def test_a_symlink_to_a_file_outside_is_refused(pkg, video, capsys):
    outside = _move_out(pkg, "llm", "llm.onnx")
    (pkg / "llm.onnx").symlink_to(outside)  # same bytes, same hash: only the link is wrong
    _ask(capsys, pkg, video, "symbolic link")


def test_a_fifo_in_place_of_a_graph_is_refused_without_hanging(pkg, video, capsys):
    (pkg / "pooling.onnx").unlink()
    os.mkfifo(pkg / "pooling.onnx")
    _ask(capsys, pkg, video, "not a regular file")


def test_external_data_outside_the_package_is_refused(pkg, video, capsys):
    data = with_external_data(pkg, "../outside.data", listed=True)
    data.rename(pkg.parent / "outside.data")
    (pkg / "pooling.data").write_bytes(b"")  # listed file present: only the graph escapes
    edit_manifest(
        pkg,
        lambda d: artifact(d, "pooling")["external_data"][0].update(
            sha256=sha256(pkg / "pooling.data")
        ),
    )
    _ask(capsys, pkg, video, "leaves its folder")


def test_external_data_the_manifest_does_not_list_is_refused(pkg, video, capsys):
    with_external_data(pkg, "pooling.data", listed=False)
    _ask(capsys, pkg, video, "does not list")


def test_a_flipped_byte_in_listed_external_data_is_caught_by_ask_and_verify(pkg, video, capsys):
    data = with_external_data(pkg, "pooling.data", listed=True)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    data.write_bytes(bytes(raw))
    _ask(capsys, pkg, video, "does not match the sha256")
    assert_refused(capsys, "verify", pkg, match="does not match the sha256")


def test_swapped_role_files_with_matching_hashes_are_refused(pkg, video, capsys):
    vision, pooling = pkg / "vision_encoder.onnx", pkg / "pooling.onnx"
    vision.rename(pkg / "swap"), pooling.rename(vision), (pkg / "swap").rename(pooling)

    def swap(data):
        a, b = artifact(data, "vision_encoder"), artifact(data, "pooling")
        a["sha256"], b["sha256"] = b["sha256"], a["sha256"]

    edit_manifest(pkg, swap)
    _ask(capsys, pkg, video, "another role's graph")


def test_recorded_tensor_names_must_be_the_roles_contract(pkg, video, capsys):
    edit_manifest(pkg, lambda d: artifact(d, "llm")["inputs"][0].update(name="pixel_values"))
    _ask(capsys, pkg, video, "not those of the llm graph")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d["limits"].update(max_context=10**12), "limits.max_context"),
        (lambda d: d["limits"].update(max_context=1.5), "limits.max_context"),
        (lambda d: d["model_config"]["text_config"].update(num_key_value_heads=10**9), "exceeds"),
        (lambda d: d["model_config"]["text_config"].update(num_hidden_layers=10**12), "exceeds"),
        (lambda d: d["model_config"]["text_config"].update(num_hidden_layers=-1), "positive"),
        (lambda d: d["model_config"]["text_config"].update(rope_theta="nan"), "rope_theta"),
        (lambda d: d["graphs"]["llm"]["dims"]["past_len"].update(max=10**15), "range"),
        (lambda d: d["graphs"].update(evil=d["graphs"]["llm"]), "unknown graph roles"),
    ],
)
def test_sizes_from_the_manifest_are_bounded(pkg, video, capsys, change, match):
    edit_manifest(pkg, change)
    _ask(capsys, pkg, video, match)


def test_nan_literals_in_a_manifest_are_not_json(pkg, video, capsys):
    text = (pkg / "manifest.json").read_text()
    (pkg / "manifest.json").write_text(text.replace('"rope_theta": 10000.0', '"rope_theta": NaN'))
    _ask(capsys, pkg, video, "not valid JSON")


def test_a_tampered_tokenizer_is_caught(pkg, video, capsys):
    tokenizer = json.loads((pkg / "tokenizer.json").read_text())
    (pkg / "tokenizer.json").write_text(json.dumps(tokenizer) + " ")
    _ask(capsys, pkg, video, "tokenizer.json does not match the sha256")


def test_the_untouched_copy_opens(pkg):
    package = open_package(pkg)
    assert package.max_context == 512


def test_a_manifest_symlinked_from_outside_is_refused(pkg):
    outside = pkg.parent / "manifest.json"
    (pkg / "manifest.json").rename(outside)
    (pkg / "manifest.json").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        open_package(pkg)
