"""File helpers every writer and reader shares: JSON, sha256, atomic writes.

Atomic means: the new content is complete under a temporary name in the
target's own folder and then renamed over the target, so a reader (or a
crash) sees the old artifact or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from crosslmm_edge.runtime.errors import UserError

BLOCK = 1 << 20


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, or raise ``UserError`` naming it."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


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


def write_atomic(target: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(handle)`` under a temporary name, then rename it in.

    Raises ``UserError`` (naming the target) on any OS error; the temporary file
    never survives a failure or an interrupt.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise UserError(f"cannot write {target}: no folder {target.parent}")
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | Path, text: str) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(target, lambda handle: handle.write(text.encode("utf-8")))


def replace_folder(temp: Path, target: Path) -> None:
    """Rename folder ``temp`` onto ``target``; a failed swap keeps the old ``target``."""
    if not target.exists():
        temp.rename(target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    target.rename(old)
    try:
        temp.rename(target)
    except OSError:
        old.rename(target)  # the previous artifact rather than none
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(target: str | Path, what: str, force: bool = False) -> Iterator[Path]:
    """Yield an empty hidden sibling folder; on success it replaces ``target``.

    ``what`` names the artifact in messages ("package", "checkpoint"). An
    existing ``target`` is replaced only with ``force``. OS errors become one
    ``UserError``; on any failure the staging folder is removed.
    """
    target = Path(target)
    if target.exists() and not force:
        raise UserError(f"{target}: already exists (use --force to replace it)")
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        yield temp
        replace_folder(temp, target)
    except OSError as exc:  # disk full, read-only, a file where a folder should be
        raise UserError(f"cannot write {what} {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
