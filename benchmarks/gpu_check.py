"""The GPU check: ONNX Runtime's CUDA provider run for real, checked and measured, in one
command that writes one JSON report and a summary.

    python3 -m crosslmm_edge.benchmarks.gpu_check --out $OUT/gpu-check   # on the GPU machine
    python3 -m crosslmm_edge.benchmarks.gpu_check --provider cpu --out /tmp/gpu-check-dry

Steps (``gpu_check_steps.py``), in order, each in child processes with a
timeout cut from one total ``--time-limit``: ``environment`` (GPU, driver,
Python, torch), ``install`` (onnxruntime-gpu from the carried bundle into a
venv that sees the machine's torch, then this project), ``tests`` (the
real-CUDA tests), ``embedded`` (``ask --provider cuda --json`` per precision
of the embedded model against the CPU's tokens and the true answers),
``placement`` (which provider runs each node), ``decode`` (0.5B shape, fp16:
ours against transformers SDPA and the bandwidth limit) and ``prefill`` (32
and 64 frames, CrossLMM against the full-token layout). The report is
rewritten after every step, so a run cut short keeps what it measured.
``--provider cpu`` runs the same flow on the CPU with the embedded model (no
install: this interpreter's packages), only to exercise the code. Standard
library only at import: it starts before anything is installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..runtime.errors import UserError
from .gpu_check_run import REPO, Check, run_steps, summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit 0 when no step failed, 1 otherwise, 2 on a usage error."""
    from .gpu_check_steps import STEPS

    parser = argparse.ArgumentParser(prog="python3 -m crosslmm_edge.benchmarks.gpu_check")
    parser.add_argument("--out", required=True, help="folder for report.json, summary, logs")
    parser.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--work",
        default="/tmp/crosslmm-gpu-work",
        help="venv, wheelhouse, packages (large: keep it out of --out)",
    )
    parser.add_argument(
        "--bundle",
        action="append",
        help="folders holding the carried bundle parts (default: .gpu-carry, "
        "/tmp/crosslmm-gpu-bundle)",
    )
    parser.add_argument("--time-limit", type=float, default=540, help="seconds, all steps")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), help="default: all, in order")
    args = parser.parse_args(argv)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    bundles = args.bundle or [str(REPO / ".gpu-carry"), "/tmp/crosslmm-gpu-bundle"]
    check = Check(
        provider=args.provider,
        out=out,
        work=work,
        bundles=[Path(b) for b in bundles],
        deadline=time.monotonic() + args.time_limit,
    )
    check.report.update(provider=args.provider, time_limit_s=args.time_limit)
    chosen = args.steps or list(STEPS)
    try:
        ok = run_steps(check, [(name, STEPS[name]) for name in STEPS if name in chosen])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(check.report), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
