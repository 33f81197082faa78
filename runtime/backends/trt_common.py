"""What the TensorRT builder and backend share: the import, the logger, dtype names."""

from __future__ import annotations

import importlib
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import UserError

# trt.DataType member name -> numpy dtype name (the manifest's TensorSpec.dtype).
DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}
LOG_LINES = 60  # the last lines of any severity down to INFO, shown when TensorRT fails
ERROR_LINES = 200  # errors and warnings are kept apart: later INFO lines cannot push them out
MIN_TENSORRT = (10, 0)  # the enqueueV3 / named-tensor API and strongly typed networks

INSTALL_HINT = (
    "on JetPack 6 it comes with JetPack (apt install python3-libnvinfer; make the venv "
    "with --system-site-packages); on a desktop GPU: pip install tensorrt"
)


def import_tensorrt(what: str) -> Any:
    """``tensorrt`` 10 or later, or one ``UserError`` naming what is missing and how to get it."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise UserError(
            f"{what} needs TensorRT's Python module 'tensorrt', which is not installed "
            f"({exc}); {INSTALL_HINT}"
        ) from None
    version = str(getattr(trt, "__version__", "unknown"))
    if version_numbers(version)[:2] < MIN_TENSORRT:
        raise UserError(
            f"{what} needs TensorRT 10 or later; TensorRT {version} is installed (JetPack 5 "
            f"ships 8.5: use JetPack 6.1 or later, TensorRT 10.3); {INSTALL_HINT}"
        )
    return trt


def version_numbers(version: str) -> tuple[int, ...]:
    """(10, 3, 0, 30) from "10.3.0.30" (or (8, 7) from a compute capability); () if none."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


def dtype_name(trt_dtype: Any) -> str:
    """numpy name of a ``trt.DataType``."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    return DTYPE_NAMES.get(name, name.lower())


def capturing_logger(trt: Any, echo: Callable[[str], None] | None = None) -> Any:
    """A ``trt.ILogger`` keeping the last lines (shown when TensorRT fails).

    TensorRT's Python ``ILogger`` takes the GIL and calls ``log`` for every
    message, VERBOSE included (``PyLogger`` in pyCore.cpp has no filter; only
    the built-in ``trt.Logger`` has ``min_severity``), and a build logs
    thousands: VERBOSE returns on one integer comparison and is never kept.
    Errors and warnings are also kept apart (``errors``) so the lines TensorRT
    logs after a failure cannot push them out. ``echo`` also receives warnings
    and errors as they come.
    """
    verbose = int(trt.ILogger.Severity.VERBOSE)
    warning = int(trt.ILogger.Severity.WARNING)

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: deque[str] = deque(maxlen=LOG_LINES)
            self.errors: deque[str] = deque(maxlen=ERROR_LINES)

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level >= verbose:
                return
            label = getattr(severity, "name", str(severity)).split(".")[-1]
            line = f"[{label}] {msg}"
            self.lines.append(line)
            if level <= warning:
                self.errors.append(line)
                if echo:
                    echo(f"TensorRT {label}: {msg}")

        def tail(self, count: int = 12) -> str:
            """The last ``count`` lines, one per line."""
            return "\n".join(list(self.lines)[-count:]) or "(TensorRT logged nothing)"

        def clear(self) -> None:
            """Forget what was logged (before the next build)."""
            self.lines.clear()
            self.errors.clear()

    return CapturingLogger()
