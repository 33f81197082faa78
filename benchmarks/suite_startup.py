"""Suite ``startup``: from opening a package to ready, in a fresh process and again in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
from crosslmm_edge.runtime.assistant import RuntimeAssistant
times = []
for _ in range(2):
    start = time.perf_counter()
    RuntimeAssistant(sys.argv[1], provider="cpu")
    times.append(time.perf_counter() - start)
print(json.dumps({"first_s": times[0], "second_s": times[1]}))
"""


def run_startup(package: Path, args) -> dict:
    """Median over ``repeats`` fresh processes: first open (cold) and a second open (warm)."""
    rows = []
    for _ in range(args.repeats):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(package)], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows.sort(key=lambda r: r["first_s"])
    middle = rows[len(rows) // 2]
    size = sum(f.stat().st_size for f in package.iterdir() if f.is_file())
    return {
        "package_bytes": size,
        "open_first_s": middle["first_s"],
        "open_again_s": middle["second_s"],
    }
