"""Video-state files are parsed defensively, and saving one never damages what is there.

A good state is saved once; every hostile variant is that file with one
thing changed, loaded through ``ask --video-state`` (exit 2, one line).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import write_test_video
from tests.trust_helpers import assert_refused, exported_package, npz_bytes


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    return exported_package(tmp_path_factory)


@pytest.fixture(scope="module")
def saved(pkg, tmp_path_factory) -> tuple[Path, Path]:
    """(video, good state file) for the embedded model's package."""
    folder = tmp_path_factory.mktemp("state")
    video = write_test_video(folder / "v.mp4", frames=4, size=32)
    state = folder / "good.npz"
    code = _ask(pkg, video, "--save-video-state", state)
    assert code == 0 and state.is_file()
    return video, state


def _ask(pkg: Path, video: Path, *extra) -> int:
    from crosslmm_edge.cli import main

    argv = ["ask", pkg, "--video", video, "--question", "what colour?", "--max-new-tokens", "2"]
    return main([str(a) for a in [*argv, *extra]])


def _members(state: Path) -> dict[str, np.ndarray]:
    with np.load(state) as data:
        return {name: data[name] for name in data.files}


def _write(path: Path, members: dict[str, np.ndarray], compress: bool = False) -> Path:
    path.write_bytes(npz_bytes(members, compress))
    return path


def _changed(members, name, convert):
    return {**members, name: convert(members[name])}


def _prefix(members, length_change):
    out = dict(members)
    for name, value in members.items():
        if name.startswith("prefix_"):
            out[name] = (
                value[:, :-1] if length_change < 0 else np.concatenate([value, value[:, :1]], 1)
            )
    return out


HOSTILE = {
    "float64 arrays": lambda m: _changed(m, "visual_embeds", lambda a: a.astype(np.float64)),
    "float16 cache": lambda m: _changed(m, "prefix_key/0", lambda a: a.astype(np.float16)),
    "big-endian": lambda m: _changed(m, "visual_embeds", lambda a: a.astype(">f4")),
    "NaN contents": lambda m: _changed(m, "cross/t2v_key.0", lambda a: a * np.nan),
    "inf contents": lambda m: _changed(m, "prefix_value/1", lambda a: a + np.inf),
    "prefix shorter": lambda m: _prefix(m, -1),
    "prefix longer": lambda m: _prefix(m, +1),
    "extra member": lambda m: {**m, "evil": np.zeros(3)},
    "missing layer": lambda m: {k: v for k, v in m.items() if k != "prefix_value/1"},
    "int arrays": lambda m: _changed(m, "visual_embeds", lambda a: a.astype(np.int32)),
    "fortran order": lambda m: _changed(m, "visual_embeds", np.asfortranarray),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_arrays_are_refused(pkg, saved, tmp_path, capsys, name):
    video, state = saved
    bad = _write(tmp_path / "bad.npz", HOSTILE[name](_members(state)))
    assert_refused(capsys, *_ask_args(pkg, video, bad), match="video state")


def _ask_args(pkg, video, state):
    return ["ask", pkg, "--video", video, "--question", "q", "--video-state", state]


def test_compressed_members_are_refused(pkg, saved, tmp_path, capsys):
    video, state = saved
    bad = _write(tmp_path / "zip.npz", _members(state), compress=True)
    assert_refused(capsys, *_ask_args(pkg, video, bad), match="compressed")


@pytest.mark.parametrize("kind", ["empty", "fifo", "folder", "cut", "junk"])
def test_files_that_are_not_states_are_refused(pkg, saved, tmp_path, capsys, kind):
    video, state = saved
    bad = tmp_path / "bad.npz"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(bad)  # would hang a plain open()
    elif kind == "folder":
        bad.mkdir()
    elif kind == "cut":
        bad.write_bytes(state.read_bytes()[:-100])
    else:
        bad.write_bytes(os.urandom(4096))
    assert_refused(capsys, *_ask_args(pkg, video, bad))


def test_a_good_state_still_loads_and_answers_the_same(pkg, saved, capsys):
    video, state = saved
    assert _ask(pkg, video, "--json") == 0
    fresh = capsys.readouterr().out
    assert _ask(pkg, video, "--json", "--video-state", state) == 0
    reloaded = capsys.readouterr().out
    tokens = [json.loads(out)["answers"][0]["token_ids"] for out in (fresh, reloaded)]
    assert tokens[0] == tokens[1]


def test_saving_onto_a_fifo_or_folder_keeps_it(pkg, saved, tmp_path, capsys):
    video, _ = saved
    fifo = tmp_path / "state.npz"
    os.mkfifo(fifo)
    args = ["ask", pkg, "--video", video, "--question", "q", "--save-video-state"]
    assert_refused(capsys, *args, fifo, match="not a regular file")
    assert fifo.is_fifo()
    assert_refused(capsys, *args, tmp_path, match="not a regular file")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_errors_while_saving_are_one_line(pkg, saved, tmp_path, capsys, monkeypatch, code):
    video, _ = saved
    target = tmp_path / "state.npz"
    target.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "savez", fail)
    args = ["ask", pkg, "--video", video, "--question", "q", "--save-video-state", target]
    assert_refused(capsys, *args, match=os.strerror(code))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]
