"""What the TensorRT builder and backend share: the import, the logger, dtype names."""

from __future__ import annotations

import importlib
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
LOG_LINES = 60

INSTALL_HINT = (
    "on JetPack 6 it comes with JetPack (apt install python3-libnvinfer; make the venv "
    "with --system-site-packages); on a desktop GPU: pip install tensorrt"
)


def import_tensorrt(what: str) -> Any:
    """``tensorrt``, or one ``UserError`` naming what is missing and how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise UserError(
            f"{what} needs TensorRT's Python module 'tensorrt', which is not installed "
            f"({exc}); {INSTALL_HINT}"
        ) from None


def dtype_name(trt_dtype: Any) -> str:
    """numpy name of a ``trt.DataType``."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    return DTYPE_NAMES.get(name, name.lower())


def capturing_logger(trt: Any, echo: Callable[[str], None] | None = None) -> Any:
    """A ``trt.ILogger`` keeping the last lines (shown when TensorRT fails).

    ``echo`` also receives warnings and errors as they come.
    """

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: deque[str] = deque(maxlen=LOG_LINES)

        def log(self, severity: Any, msg: str) -> None:
            label = getattr(severity, "name", str(severity)).split(".")[-1]
            self.lines.append(f"[{label}] {msg}")
            if echo and int(severity) <= int(trt.ILogger.Severity.WARNING):
                echo(f"TensorRT {label}: {msg}")

        def tail(self, count: int = 12) -> str:
            """The last ``count`` lines, one per line."""
            return "\n".join(list(self.lines)[-count:]) or "(TensorRT logged nothing)"

    return CapturingLogger()
