"""Temporary names beside a target, swapping them in, and cleaning up after killed runs.

Every writer builds its artifact under a hidden name in the target's own
folder that carries the writer's process id, ``.NAME.tmp-PID[-random]``, and
renames it into place when complete. A run killed with ``kill -9`` cannot
clean up after itself, so the next writer of the same target removes
temporaries whose process is gone (and puts back an old artifact that a
killed swap had moved aside). Temporaries of live processes are left alone:
another run may be writing them right now.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
from pathlib import Path

TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[^/]*)?$")
# Staging folders tools make inside a package (.add-PID, .quantize-PID): cleaned by add_artifacts.
TOOL_STAGING = re.compile(r"^\.(?P<tool>[a-z_]+)-(?P<pid>\d+)$")
RENAME_EXCHANGE = 2  # linux/fs.h


def temp_name(name: str, kind: str = "tmp") -> str:
    """The hidden sibling name this process uses for ``name`` (``kind``: tmp or old)."""
    return f".{name}.{kind}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours counts as alive: its temporaries are in use)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a pid we cannot judge: leave it
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(folder: Path, name: str | None = None) -> list[Path]:
    """Remove temporaries of dead processes in ``folder`` (only ``name``'s, if given).

    A ``.NAME.old-PID`` left by a swap killed half-way is renamed back to
    ``NAME`` when ``NAME`` is missing, so the old artifact survives. Returns
    what was removed or restored. Errors are ignored: cleaning is best effort.
    """
    done: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return done
    for path in entries:
        match = TEMP_PATTERN.match(path.name)
        tool = TOOL_STAGING.match(path.name) if name is None else None
        found = match or tool
        if found is None or (match and name is not None and match["name"] != name):
            continue
        if process_alive(int(found["pid"])):
            continue
        try:
            if match and match["kind"] == "old" and not os.path.lexists(folder / match["name"]):
                path.rename(folder / match["name"])
            else:
                _remove(path)
        except OSError:
            continue
        done.append(path)
    return done


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # old kernel or a file system without exchange
    raise OSError(code, os.strerror(code), str(second))


def replace_folder(temp: Path, target: Path) -> None:
    """Put folder ``temp`` at ``target``; at every instant ``target`` is old or new.

    Uses an atomic exchange where the system has one. Elsewhere the old folder
    is moved aside first; a kill between the two renames leaves it as
    ``.NAME.old-PID``, which the next writer (``clean_stale``) puts back.
    """
    if not os.path.lexists(target):
        temp.rename(target)
        return
    if _exchange(temp, target):
        shutil.rmtree(temp, ignore_errors=True)  # temp now holds the old artifact
        return
    old = target.parent / temp_name(target.name, "old")
    target.rename(old)
    try:
        temp.rename(target)
    except OSError:
        old.rename(target)  # the previous artifact rather than none
        raise
    shutil.rmtree(old, ignore_errors=True)
