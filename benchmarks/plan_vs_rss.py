"""`plan --device cpu` against the measured peak RSS of `ask` (a child process per run).

    python3 -m crosslmm_edge.benchmarks.plan_vs_rss PKG VIDEO --frames 8 32 [--context L]

Prints predicted and measured MiB and the error; exit 1 if any is beyond 15 %.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

MIB = 1 << 20


def measured(package: str, video: str, frames: int) -> int:
    """Peak RSS in bytes of one `ask` in a child (ru_maxrss of the waited-for children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    question = ["--question", "what colour is the small dot?", "--max-new-tokens", "8"]
    command = [sys.executable, "-m", "crosslmm_edge", "ask", package, "--video", video]
    command += ["--frames", str(frames), "--provider", "cpu", "--json", *question]
    subprocess.run(command, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise SystemExit("an earlier child peaked higher: run one frame count per process")
    return after * 1024


def predicted(package: str, frames: int, context: int | None) -> int:
    command = [sys.executable, "-m", "crosslmm_edge", "plan", "--model", package]
    command += ["--device", "cpu", "--frames", str(frames), "--json"]
    command += ["--context", str(context)] if context else []
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout)["peak_bytes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("package")
    parser.add_argument("video")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--context", type=int, default=None)
    args = parser.parse_args()
    worst = 0.0
    for frames in sorted(args.frames):  # ascending: ru_maxrss of children only grows
        plan, real = (
            predicted(args.package, frames, args.context),
            measured(args.package, args.video, frames),
        )
        error = plan / real - 1
        worst = max(worst, abs(error))
        line = f"plan {plan / MIB:8.1f} MiB, ask {real / MIB:8.1f} MiB, {error:+.1%}"
        print(f"{frames:4d} frames: {line}")
    return 1 if worst > 0.15 else 0


if __name__ == "__main__":
    sys.exit(main())
