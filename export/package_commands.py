"""The ``export``, ``verify`` and ``lint-trt`` subcommands (torch imported only when run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``verify`` and ``lint-trt`` to the CLI."""
    export = subparsers.add_parser(
        "export",
        help="export a CrossLMM checkpoint to a model package (three ONNX graphs)",
        description="Write vision_encoder.onnx, pooling.onnx, llm.onnx, the tokenizer files "
        "and manifest.json into a package folder, atomically.",
    )
    export.add_argument("checkpoint", help="CrossLMM checkpoint folder")
    export.add_argument("--out", required=True, help="package folder to create")
    export.add_argument(
        "--max-frames", type=int, help="most frames per video (default: num_frames)"
    )
    export.add_argument("--max-context", type=int, help="most positions (default: model's, ≤ 8192)")
    export.add_argument(
        "--dtype",
        choices=("fp32", "fp16"),
        action="append",
        help="precision of the graphs; repeat for several side by side (default: fp32)",
    )
    export.add_argument("--force", action="store_true", help="replace an existing --out")
    export.add_argument(
        "--add",
        action="store_true",
        help="add the --dtype graphs to an existing package of the same checkpoint",
    )
    export.add_argument(
        "--all-logits", action="store_true", help="llm.onnx returns every position's logits"
    )
    export.set_defaults(func=run_export)

    verify = subparsers.add_parser(
        "verify",
        help="compare a package's graphs in ONNX Runtime with the PyTorch model",
        description="Run each graph on random inputs at 1, 2 and max frames, chunks of 1 and "
        "more tokens, empty and non-empty past; print each output's max abs error and cosine; "
        "then check that the chained graphs pick the same greedy tokens. Exit 1 on failure.",
    )
    verify.add_argument("package", help="model package folder")
    verify.add_argument("--checkpoint", help="source checkpoint (default: the manifest's)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    verify.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        action="append",
        help="verify only these ONNX artifact sets (default: every one the package holds)",
    )
    verify.set_defaults(func=run_verify)

    lint = subparsers.add_parser(
        "lint-trt",
        help="check that a package's graphs use only ops and dtypes TensorRT 10 parses",
        description="Static check against TensorRT 10.0's ONNX operator support; exit 1 "
        "naming each unsupported op, dtype or attribute.",
    )
    lint.add_argument("package", help="model package folder (or one .onnx file)")
    lint.set_defaults(func=run_lint)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_export(args: argparse.Namespace) -> int:
    """Export and print where the package went."""
    from .package import export_package

    manifest = export_package(
        args.checkpoint,
        args.out,
        max_frames=args.max_frames,
        max_context=args.max_context,
        precisions=args.dtype or ["fp32"],
        force=args.force,
        log=_progress,
        all_logits=args.all_logits,
        add=args.add,
    )
    limits = manifest.limits
    print(
        f"wrote {args.out} ({', '.join(manifest.labels())}, max_frames={limits['max_frames']}, "
        f"max_context={limits['max_context']})"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify and print one line per output; exit 1 when any exceeds its tolerance."""
    from .verify import verify_package

    report = verify_package(
        args.package, args.checkpoint, seed=args.seed, log=print, precisions=args.precision
    )
    worst = report.worst
    verdict = "PASS" if report.ok else "FAIL"
    print(
        f"{verdict}: worst {worst.graph}/{worst.output} max_abs={worst.max_abs:.2e} "
        f"(tolerance {worst.tolerance:.1e}); chained greedy tokens "
        f"{'equal' if all(c.onnx_tokens == c.torch_tokens for c in report.chains) else 'differ'}"
    )
    return 0 if report.ok else 1


def _onnx_files(target: Path) -> list[tuple[Path, str | None]]:
    """Each ONNX graph, with the ``onnx-trt`` label TensorRT builds from instead when the
    graph is an ONNX Runtime form of a quantized set that has one (else None)."""
    from ..runtime.errors import UserError
    from ..runtime.package.manifest import load_manifest

    if target.is_file() and target.suffix == ".onnx":
        return [(target, None)]
    manifest = load_manifest(target)
    labels = manifest.labels()
    files: list[tuple[Path, str | None]] = []
    for graph in manifest.graphs.values():
        for art in graph.artifacts:
            twin = f"onnx-trt/{art.precision}"
            if art.backend == "onnx-trt":  # the graphs TensorRT builds INT8 and INT4 from
                files.append((target / art.file, None))
            elif art.backend == "onnx":
                files.append((target / art.file, twin if twin in labels else None))
    if not files:
        raise UserError(f"{target}: the manifest lists no ONNX graph")
    return files


def run_lint(args: argparse.Namespace) -> int:
    """Lint every ONNX graph of the package; print each problem.

    A quantized ``onnx`` graph whose set has an ``onnx-trt`` twin is ONNX
    Runtime's form (INT8 blocks, contrib ops): its problems are notes, since
    ``build`` reads the twin.
    """
    from .lint_trt import lint_file
    from .trt_support import TRT_VERSION

    failed = False
    for path, twin in _onnx_files(Path(args.package)):
        problems = lint_file(path)
        for problem in problems:
            print(("note: " if twin else "") + problem.line())
        if problems and twin:
            verdict = f"ONNX Runtime form; TensorRT builds from {twin}"
        else:
            verdict = "FAIL" if problems else "ok"
        print(f"{path.name}: {verdict} (TensorRT {TRT_VERSION} ONNX support)")
        failed = failed or (bool(problems) and not twin)
    return 1 if failed else 0
