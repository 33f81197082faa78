"""Names from a manifest or a graph must stay inside their package folder.

A name is a relative path with no ``..``, no drive or root, no NUL and no
backslash, and every component of it below the folder is a real entry, not
a symbolic link (a link inside a package could point anywhere, and the
folder may be copied with it). The file itself must be a regular file: a
FIFO or device under a graph's name would hang or stream forever.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from ..errors import UserError


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a plain relative path inside a folder, or None."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if "\0" in name or "\\" in name or ":" in name:
        return "holds a NUL, backslash or colon"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "is an absolute path"
    if any(part in ("..", ".") for part in name.split("/")) or not path.parts:
        return "leaves its folder (.. or .)"
    if any(not part for part in name.split("/")):
        return "has an empty path component"
    return None


def inside(folder: Path, name: object, what: str) -> Path:
    """``folder / name``, checked: inside ``folder``, no symlink, a regular file.

    ``what`` names the reference in messages ("graph file of llm (onnx/fp32)").
    """
    problem = name_problem(name)
    if problem:
        raise UserError(f"{folder}: {what} {name!r} {problem}; refusing to load it")
    assert isinstance(name, str)
    path = folder
    for part in PurePosixPath(name).parts:
        path = path / part
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise UserError(f"{path}: {what} is missing") from None
        except OSError as exc:
            raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(info.st_mode):
            raise UserError(
                f"{path}: {what} is a symbolic link; a package holds its own files "
                "(copy the target in instead)"
            )
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: {what} is not a regular file")
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:  # e.g. the folder is reached through a link
        raise UserError(f"{path}: {what} resolves outside {folder}")
    return path


def relative_to_graph(graph_file: str, location: str) -> str:
    """The package-relative name of external data ``location`` written in ``graph_file``.

    ONNX Runtime resolves a location against the graph file's own folder.
    """
    problem = name_problem(location)
    if problem:
        raise UserError(
            f"graph {graph_file} names external data {location!r}, which {problem}; "
            "refusing to load it"
        )
    parent = PurePosixPath(graph_file).parent
    return str(parent / location) if str(parent) != "." else location
