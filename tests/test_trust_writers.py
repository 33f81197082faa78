"""Writers replace only what they own, clean up after killed runs, and the hash cache holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.package import files, hash_cache, staging
from crosslmm_edge.runtime.package.files import staged_folder, write_atomic, write_text_atomic
from crosslmm_edge.runtime.package.hash_cache import HashCache
from crosslmm_edge.runtime.package.staging import clean_stale


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # exited and reaped: no such process now


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path: Path):
    dead = _dead_pid()
    (tmp_path / f".pkg.tmp-{dead}").mkdir()
    (tmp_path / f".pkg.tmp-{dead}" / "llm.onnx").write_bytes(b"half")
    (tmp_path / f".state.npz.tmp-{dead}-abc").write_bytes(b"half")
    (tmp_path / f".pkg.tmp-{os.getppid()}").mkdir()  # a live run's: left alone
    (tmp_path / ".other.tmp-x").mkdir()  # not ours
    with staged_folder(tmp_path / "pkg", "package") as temp:
        (temp / "manifest.json").write_text("{}")
    write_text_atomic(tmp_path / "state.npz", "new")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["pkg", "state.npz", f".pkg.tmp-{os.getppid()}", ".other.tmp-x"])


def test_an_old_folder_moved_aside_by_a_killed_swap_comes_back(tmp_path: Path):
    dead = _dead_pid()
    (tmp_path / f".pkg.old-{dead}").mkdir()
    (tmp_path / f".pkg.old-{dead}" / "manifest.json").write_text("old")
    assert clean_stale(tmp_path, "pkg")
    assert (tmp_path / "pkg" / "manifest.json").read_text() == "old"


@pytest.mark.parametrize("exchange", [True, False])
def test_force_swaps_a_package_in_whole(tmp_path: Path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    with staged_folder(target, "package", force=True, marker="manifest.json") as temp:
        (temp / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


@pytest.mark.parametrize("kind", ["other folder", "file", "symlink"])
def test_force_replaces_only_a_folder_of_ours(tmp_path: Path, kind):
    target = tmp_path / "out"
    if kind == "other folder":
        target.mkdir()
        (target / "thesis.tex").write_text("mine")
    elif kind == "file":
        target.write_text("mine")
    else:
        target.symlink_to(tmp_path)
    with (
        pytest.raises(UserError, match="refusing to replace"),
        staged_folder(target, "package", force=True, marker="manifest.json"),
    ):
        pass
    assert os.path.lexists(target)


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_atomic_writes_replace_only_regular_files(tmp_path: Path, kind):
    target = tmp_path / "out.bin"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="not a regular file"):
        write_atomic(target, lambda handle: handle.write(b"x"))
    assert os.path.lexists(target) and len(list(tmp_path.iterdir())) == 1


SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
from crosslmm_edge import cli
from crosslmm_edge.runtime.package.files import staged_folder
previous = cli._install_signal_handlers()
try:
    with staged_folder(Path(sys.argv[1]), "package") as temp:
        (temp / "manifest.json").write_text("half")
        print("ready", flush=True)
        time.sleep(60)
except cli.Terminated as exc:
    sys.exit(128 + exc.signum)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_clean_up_the_staging_folder(tmp_path: Path, signum):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGTERM_SCRIPT), str(tmp_path / "pkg")],
        stdout=subprocess.PIPE,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and Python then keeps it
        # ignored: give the child the disposition an interactive run has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signum)
    assert child.wait(timeout=30) != 0
    assert list(tmp_path.iterdir()) == []


def test_read_json_refuses_fifos_and_huge_files(tmp_path: Path):
    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(UserError, match="not a regular file"):
        files.read_json(tmp_path / "config.json")
    (tmp_path / "big.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UserError, match="not valid JSON"):
        files.read_json(tmp_path / "big.json")
    with pytest.raises(UserError, match="more than"):
        files.read_json(tmp_path / "big.json", max_bytes=1000)


# -- the hash cache ---------------------------------------------------------


def _counting(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = hash_cache.file_sha256
    monkeypatch.setattr(hash_cache, "file_sha256", lambda p: calls.append(p) or real(p))
    return calls


def _verified_file(tmp_path: Path) -> tuple[Path, str, HashCache]:
    path = tmp_path / "llm.onnx"
    path.write_bytes(os.urandom(4096))
    digest = files.file_sha256(path)
    cache = HashCache(tmp_path / "cache" / "verified.json", min_bytes=0, settle_s=0)
    assert cache.matches(path, digest)
    return path, digest, cache


def test_the_cache_skips_hashing_an_unchanged_file(tmp_path: Path, monkeypatch):
    path, digest, _ = _verified_file(tmp_path)
    calls = _counting(monkeypatch)
    fresh = HashCache(tmp_path / "cache" / "verified.json", min_bytes=0, settle_s=0)
    assert fresh.matches(path, digest) and calls == []


def test_a_tampered_file_with_its_mtime_restored_misses_the_cache(tmp_path: Path):
    path, digest, _ = _verified_file(tmp_path)
    before = path.stat()
    time.sleep(0.01)
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime
    assert path.stat().st_size == before.st_size
    fresh = HashCache(tmp_path / "cache" / "verified.json", min_bytes=0, settle_s=0)
    assert not fresh.matches(path, digest)  # ctime moved: hashed again, caught


def test_a_cache_others_can_write_is_ignored(tmp_path: Path, monkeypatch):
    path, digest, cache = _verified_file(tmp_path)
    os.chmod(cache.path, 0o666)
    calls = _counting(monkeypatch)
    fresh = HashCache(cache.path, min_bytes=0, settle_s=0)
    assert fresh.matches(path, digest) and calls == [path]


def test_a_file_written_just_now_is_not_remembered(tmp_path: Path, monkeypatch):
    path = tmp_path / "llm.onnx"
    path.write_bytes(b"x" * 100)
    cache = HashCache(tmp_path / "verified.json", min_bytes=0)  # default settle time
    assert cache.matches(path, files.file_sha256(path))
    assert not cache.path.exists()  # a write in the same clock tick could go unseen


def test_a_name_the_file_system_refuses_is_one_error_line(tmp_path: Path, capsys):
    from tests.trust_helpers import assert_refused

    target = tmp_path / ("x" * 300)  # ENAMETOOLONG: pathlib's exists() raises on 3.11
    assert_refused(capsys, "synth-video", "--out", target, "--seed", "1", match="too long")
    assert list(tmp_path.iterdir()) == []
