"""The ``crosslmm-edge`` command line.

Each command lives next to the code it drives, in a module exposing
``register(subparsers)``. Those modules must stay cheap to import (no torch at
import time) so that runtime-only installs can run ``ask`` on a package.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import __version__
from .runtime.errors import UserError

# Modules that add subcommands, in --help order.
COMMAND_MODULES = (
    "crosslmm_edge.assistant_commands",  # ask, chat: checkpoint or package
    "crosslmm_edge.export.checkpoints.checkpoint_commands",  # compose
    "crosslmm_edge.export.graphs.package_commands",  # export, verify, lint-trt
    "crosslmm_edge.export.tensorrt.engine_commands",  # build, plan (TensorRT engines, memory)
    "crosslmm_edge.calibration.world.commands",  # synth-video, eval
    "crosslmm_edge.calibration.quantize_commands",  # quantize, drift
    "crosslmm_edge.demo",  # demo
    "crosslmm_edge.benchmarks.bench_commands",  # bench
    "crosslmm_edge.serve_commands",  # serve
)

# Top-level modules that only the export extra installs.
EXPORT_EXTRA_MODULES = frozenset({"torch", "safetensors", "onnx", "onnxscript"})


# OS errors that a user's path or disk causes (not a bug of ours).
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EPERM, errno.EROFS,
        errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
    }
)  # fmt: skip

# Signals that end a run like Ctrl-C does: unwinding, so every writer's cleanup runs.
CLEANUP_SIGNALS = ("SIGTERM", "SIGHUP")


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP so ``finally`` blocks clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    # Further signals are ignored: they must not interrupt the cleanup they started.
    for name in CLEANUP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise Terminated(signum)


# A handler as signal.signal takes and returns it (None: one set outside Python).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _install_signal_handlers() -> dict[int, SignalHandler]:
    """Route the cleanup signals to ``_terminate``; the previous handlers, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (main() called from a worker)
    numbers = [getattr(signal, name) for name in CLEANUP_SIGNALS if hasattr(signal, name)]
    return {number: signal.signal(number, _terminate) for number in numbers}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="crosslmm-edge",
        description="Export, quantize and run CrossLMM video models on the edge.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user mistakes end in one ``error:`` line and exit 2."""
    args = build_parser().parse_args(argv)
    previous = _install_signal_handlers()
    try:
        return _run(args)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run(args: argparse.Namespace) -> int:
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in EXPORT_EXTRA_MODULES:
            raise
        # A runtime-only install (a Jetson) lacks the export side's packages.
        print(
            f"error: `{args.command}` needs the export tools (module {exc.name!r} is missing): "
            "pip install 'crosslmm-edge[export]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"error: terminated ({exc})", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        # A path the file system refuses (too long, a loop, read-only, full) that a check
        # before the writer met first: still the user's path, so one line, not a traceback.
        print(f"error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
