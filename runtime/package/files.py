"""File helpers every writer and reader shares: JSON, sha256, atomic writes.

Readers open regular files of bounded size only. Atomic means: the new
content is complete under a temporary name in the target's own folder and
then renamed over the target, so a reader (or a crash) sees the old artifact
or the new one, never half of one (runtime/package/staging.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UserError
from ..model.limits import MAX_JSON_BYTES
from .staging import clean_stale, replace_folder, temp_name

BLOCK = 1 << 20


def user_cache_path(env_var: str, name: str) -> Path | None:
    """Where a per-user cache lives: ``$env_var`` (a path; "off" disables it: None),
    else ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``crosslmm-edge/name``. Never in a
    package: a package copied from elsewhere must not bring its own cache."""
    chosen = os.environ.get(env_var)
    if chosen:
        return None if chosen == "off" else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crosslmm-edge" / name


def open_regular(path: str | Path, max_bytes: int, what: str) -> BinaryIO:
    """Open a regular file of at most ``max_bytes`` for reading, or raise ``UserError``.

    Opened without blocking, so a FIFO or a device under the name cannot hang
    or stream forever; the checks run on the opened descriptor, not the name.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "not a regular file"
    elif info.st_size > max_bytes:
        problem = f"{info.st_size} bytes, more than the {max_bytes} a {what} may have"
    if problem:
        os.close(fd)
        raise UserError(f"{path}: {problem}; refusing to read it as a {what}")
    return os.fdopen(fd, "rb")


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """Parse a JSON object file, or raise ``UserError`` naming it.

    Regular files of bounded size only; NaN/Infinity literals (not JSON) and
    nesting too deep for the parser are refused like any other bad text.
    """
    with open_regular(path, max_bytes, "JSON file") as handle:
        raw = handle.read(max_bytes + 1)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})"[:400]) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def hash_file_into(digest: Any, path: str | Path) -> None:
    """Feed a file's bytes into a hashlib object, 1 MiB at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed, bounded memory)."""
    digest = hashlib.sha256()
    hash_file_into(digest, path)
    return digest.hexdigest()


def _check_replaceable(target: Path) -> None:
    """Writers replace only regular files: never a device, FIFO, folder or link."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"cannot write {target}: it exists and is not a regular file")


def write_atomic(target: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(handle)`` under a temporary name, then rename it in.

    Only a missing target or a regular file is replaced. Raises ``UserError``
    (naming the target) on any OS error; the temporary file never survives a
    failure or an interrupt, and one left by a killed run is removed here.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise UserError(f"cannot write {target}: no folder {target.parent}")
    _check_replaceable(target)
    clean_stale(target.parent, target.name)
    try:
        handle, temp = tempfile.mkstemp(prefix=temp_name(target.name) + "-", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            # mkstemp makes the file private (0600); an artifact gets the mode any new file would.
            os.fchmod(file.fileno(), _default_file_mode())
            os.fsync(file.fileno())
        _check_replaceable(target)  # it may have changed while we wrote
        os.replace(temp, target)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _default_file_mode() -> int:
    """0666 less the process umask: what ``open(..., "w")`` would have given the file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def share_files(paths: Iterable[Path]) -> None:
    """Give regular files the mode a plain new file gets (some writers make them 0600)."""
    mode = _default_file_mode()
    for path in paths:
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def write_text_atomic(target: str | Path, text: str) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(target, lambda handle: handle.write(text.encode("utf-8")))


def _check_owned(target: Path, what: str, marker: str | None) -> None:
    """``--force`` replaces only a folder of ours: empty, or holding ``marker``."""
    if target.is_symlink() or not target.is_dir():
        raise UserError(f"{target}: exists and is not a folder; refusing to replace it")
    if marker is None:
        return
    try:
        empty = next(target.iterdir(), None) is None
    except OSError as exc:
        raise UserError(f"cannot replace {target}: {exc.strerror or exc}") from None
    if not empty and not (target / marker).is_file():
        raise UserError(
            f"{target}: not a {what} (no {marker}); refusing to replace it with --force"
        )


@contextmanager
def staged_folder(
    target: str | Path, what: str, force: bool = False, marker: str | None = None
) -> Iterator[Path]:
    """Yield an empty hidden sibling folder; on success it replaces ``target``.

    ``what`` names the artifact in messages ("package", "checkpoint"). An
    existing ``target`` is replaced only with ``force``, and only if it is a
    folder that is empty or holds ``marker`` (a file every such artifact has).
    Temporaries of killed runs for the same target are removed first. OS
    errors become one ``UserError``; on any failure the staging folder goes.
    """
    target = Path(target)
    if os.path.lexists(target):
        if not force:
            raise UserError(f"{target}: already exists (use --force to replace it)")
        _check_owned(target, what, marker)
    temp = target.parent / temp_name(target.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent, target.name)
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        yield temp
        share_files(temp.iterdir())
        replace_folder(temp, target)
    except OSError as exc:  # disk full, read-only, a file where a folder should be
        raise UserError(f"cannot write {what} {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
