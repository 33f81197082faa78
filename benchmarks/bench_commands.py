"""The ``bench`` subcommand: run suites, print one table per suite, write ``--json``.

Imports nothing heavy until it runs (the CLI lists it on every install).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SUITES = ("decode", "roofline", "reuse", "prefill", "context", "int8", "int4", "startup")
GPU_SUITES = ("prefill-cuda",)  # PyTorch on a CUDA GPU; not in the default list
CUDA_SUITES = ("decode", "prefill", "prefill-cuda")  # those --provider cuda runs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench``."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the runtime against transformers, optimum and the bandwidth limit",
        description="Suites: " + ", ".join(SUITES) + ". Medians of interleaved repeats; "
        "ratios are to baselines measured in the same run. Needs the dev extra (transformers).",
    )
    bench.add_argument(
        "--suite",
        action="append",
        choices=SUITES + GPU_SUITES,
        help="repeatable (default: all but prefill-cuda)",
    )
    bench.add_argument(
        "--model", default="preset:qwen2.5-0.5b", help="package folder or preset:NAME"
    )
    bench.add_argument("--workdir", default=str(Path.home() / ".cache" / "crosslmm-edge" / "bench"))
    bench.add_argument("--json", dest="json_file", help="write the figures to this file")
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--prompt-tokens", type=int, default=32)
    bench.add_argument("--context-steps", type=int, default=8)
    bench.add_argument("--prefill-frames", type=int, nargs="+", default=[8, 16, 32])
    bench.add_argument(
        "--cuda-preset", default="crosslmm-2b", help="prefill-cuda: random model of this shape"
    )
    bench.add_argument(
        "--provider",
        choices=("cpu", "cuda"),
        default="cpu",
        help="decode, prefill: ONNX Runtime provider of ours; cuda also puts transformers "
        "on the GPU and measures the GPU's bandwidth",
    )
    bench.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        help="decode, prefill: our artifacts and transformers' dtype "
        "(default: fp32 on cpu, fp16 on cuda; a preset is exported in it)",
    )
    bench.add_argument("--optimum-python", help="python of a venv with optimum-onnx installed")
    bench.add_argument("--optimum-model", help="ORTModelForCausalLM export of the same LLM")
    bench.add_argument(
        "--genai-python", help="int4: python of a venv with onnxruntime-genai (skipped without)"
    )
    bench.add_argument(
        "--genai-model", help="int4: its int4 model of the same LLM (default: built in --workdir)"
    )
    bench.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """Run the chosen suites and report."""
    import importlib.util

    from ..runtime.errors import UserError

    if importlib.util.find_spec("transformers") is None:
        raise UserError("bench compares against transformers: pip install 'crosslmm-edge[dev]'")
    from .machine import describe
    from .models import resolve_model

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    suites = args.suite or list(SUITES)
    args.precision = args.precision or ("fp16" if args.provider == "cuda" else "fp32")
    if args.provider == "cuda":
        unsupported = sorted(set(suites) - set(CUDA_SUITES))
        if unsupported:
            raise UserError(f"--provider cuda runs {', '.join(CUDA_SUITES)}, not {unsupported}")
        from .machine import describe_gpu

        machine = describe_gpu()
    else:
        machine = describe(args.threads)
    print(
        f"machine: {machine['name']}; read bandwidth {machine['bandwidth_gbs']} GB/s, "
        f"GEMM {machine['gflops']} GFLOP/s",
        flush=True,
    )
    report: dict = {"machine": machine}
    needs_package = any(suite not in GPU_SUITES for suite in suites)
    model = None
    if needs_package:
        model = resolve_model(args.model, workdir, precisions=(args.precision,))
    for suite in suites:
        print(f"== {suite}", flush=True)
        report[suite] = _run_suite(suite, model, args, machine)
        print(json.dumps(report[suite], indent=1, default=str), flush=True)
    if args.json_file:
        from ..runtime.package.files import write_text_atomic

        write_text_atomic(args.json_file, json.dumps(report, indent=1, default=str) + "\n")
    return 0


def _embedded_package(workdir: Path) -> Path:
    """The embedded model exported for 32 frames (reuse suite, Python overhead)."""
    from ..export.graphs.package import export_package
    from ..models import embedded_model_dir

    package = workdir / "embedded-32"
    if not (package / "manifest.json").is_file():
        export_package(embedded_model_dir(), package, max_frames=32, force=True)
    return package


def _run_suite(suite: str, model, args, machine: dict) -> dict:
    if suite == "prefill-cuda":
        from .suite_prefill_cuda import run_prefill_cuda

        return run_prefill_cuda(args)
    if suite == "decode":
        from .suite_decode import run_decode

        return run_decode(model, args, machine)
    if suite == "roofline":
        from .suite_decode import run_roofline

        return run_roofline(model, _embedded_package(Path(args.workdir)), args, machine)
    if suite == "reuse":
        from .suite_reuse import run_reuse

        return run_reuse(_embedded_package(Path(args.workdir)), args)
    if suite == "prefill":
        from .suite_prefill import run_prefill

        return run_prefill(model, args)
    if suite == "context":
        from .suite_context import run_context

        return run_context(model, args, machine)
    if suite == "int4":
        from .suite_int4 import run_int4

        return run_int4(model, args, machine)
    if suite == "startup":
        from .suite_startup import run_startup

        return run_startup(model.package, args)
    from .suite_int8 import run_int8

    return run_int8(model, args)
