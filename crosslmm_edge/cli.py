"""The ``crosslmm-edge`` command line.

Each command lives next to the code it drives, in a module exposing
``register(subparsers)``. Those modules must stay cheap to import (no torch at
import time) so that runtime-only installs can run ``ask`` on a package.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crosslmm_edge import __version__
from crosslmm_edge.runtime.errors import UserError

# Modules that add subcommands, in --help order.
COMMAND_MODULES = (
    "crosslmm_edge.assistant_commands",  # ask, chat: checkpoint or package
    "crosslmm_edge.export.checkpoint_commands",  # compose
    "crosslmm_edge.export.package_commands",  # export, verify, lint-trt
    "crosslmm_edge.calibration.commands",  # synth-video, eval
    "crosslmm_edge.demo",  # demo
)

# Top-level modules that only the export extra installs.
EXPORT_EXTRA_MODULES = frozenset({"torch", "safetensors", "onnx", "onnxscript"})


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
    except BrokenPipeError:
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
