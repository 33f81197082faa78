"""The ``build`` (TensorRT engines) and ``plan`` (memory) subcommands; torch-free."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.planner.memory_plan import DEVICES

MIB = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build`` and ``plan`` to the CLI."""
    build = subparsers.add_parser(
        "build",
        help="build TensorRT engines for this GPU and add them to a package",
        description="Parse the package's fp16 (or fp16-based INT8) ONNX graphs with TensorRT "
        "into strongly typed engines with decode, text and visual profiles, and add them to "
        "the package as tensorrt artifacts with an engine record. Runs on the device.",
    )
    build.add_argument("package", help="model package folder")
    build.add_argument("--precision", choices=("fp16", "int8", "int4"), default="fp16")
    build.add_argument("--max-frames", type=int, help="most frames (default: the package's)")
    build.add_argument("--max-context", type=int, help="most positions (default: the package's)")
    build.add_argument("--timing-cache", type=Path, help="timing cache file, read and updated")
    build.add_argument("--workspace-mb", type=int, default=512, help="builder workspace limit")
    build.set_defaults(func=run_build)

    plan = subparsers.add_parser(
        "plan",
        help="predict peak memory and the largest video that fits a device",
        description="Weights, KV cache, cross K/V, activations and workspace at T frames and "
        "L tokens; `--device cpu` predicts the peak RSS of `ask` with ONNX Runtime here.",
    )
    plan.add_argument("--model", required=True, help="package, checkpoint folder or config.json")
    plan.add_argument("--device", required=True, help=f"cpu or one of: {', '.join(DEVICES)}")
    plan.add_argument("--frames", type=int, required=True)
    plan.add_argument("--context", type=int, default=None, help="tokens (default: the model's)")
    plan.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default=None)
    plan.add_argument("--workspace-mb", type=int, default=512)
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=run_plan)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_build(args: argparse.Namespace) -> int:
    """Build the engines and say what was added."""
    from ..runtime.errors import UserError
    from .trt_build import BuildSettings, build_package

    for flag, value in (("--max-frames", args.max_frames), ("--max-context", args.max_context)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if args.workspace_mb < 1:
        raise UserError(f"--workspace-mb {args.workspace_mb}: must be at least 1")
    settings = BuildSettings(
        precision=args.precision,
        max_frames=args.max_frames,
        max_context=args.max_context,
        timing_cache=args.timing_cache,
        workspace_mb=args.workspace_mb,
    )
    manifest = build_package(args.package, settings, log=_progress)
    labels = ", ".join(manifest.labels())
    print(f"added tensorrt/{args.precision} engines to {args.package} ({labels})")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """Print the breakdown (or JSON) and the largest frames that fit."""
    from ..runtime.errors import UserError
    from ..runtime.planner.memory_fit import largest_frames, load_model, predictor

    model = load_model(args.model)
    precision = args.precision or ("fp32" if args.device == "cpu" else "fp16")
    context = args.context or min(model.config.text_config.max_position_embeddings, 8192)
    if args.frames < 1 or args.frames * model.config.tokens_per_frame >= context:
        raise UserError(f"--frames {args.frames} does not fit a context of {context} tokens")
    predict = predictor(model, args.device, precision, args.workspace_mb * MIB)
    result = predict(args.frames, context)
    most = largest_frames(model, predict, context)
    if args.json:
        out = {
            "device": args.device,
            "precision": precision,
            "frames": args.frames,
            "context": context,
            "peak_bytes": result.peak,
            "budget_bytes": result.budget,
            "fits": result.fits,
            "max_frames": most,
            "parts": result.parts,
        }
        print(json.dumps(out))
        return 0
    for name, value in result.parts.items():
        print(f"{name:28s} {value / MIB:10.1f} MiB")
    verdict = "fits" if result.fits else "does NOT fit"
    print(f"{'peak':28s} {result.peak / MIB:10.1f} MiB of {result.budget / MIB:.0f} MiB: {verdict}")
    print(f"largest video at {context} tokens: {most} frames")
    return 0
