"""Suite ``startup``: from opening a package to ready, without and with the optimized-graph cache.

Each open runs in a fresh process, on the CPU provider. Per repeat, in order:
the cache off (ONNX Runtime optimizes every graph, as before the cache); an
empty cache (optimizes and writes the entries); the same cache again (loads
the saved optimized graphs). The package's files are in the page cache for
all three (the first repeat's first open warms it), so what differs is the
work ONNX Runtime does, not the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from ..runtime.backends.ort_cache import ENV_PATH

CHILD = """
import json, sys, time
start = time.perf_counter()
from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
runtime = RuntimeAssistant(sys.argv[1], provider="cpu")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "loaded_from": runtime.pipeline.backend.loaded_from}))
"""


def _open(package: Path, cache: str) -> dict:
    env = {**os.environ, ENV_PATH: cache}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(package)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_startup(package: Path, args) -> dict:
    """Median seconds from process start to a ready assistant, per cache state."""
    _open(package, "off")  # page-cache the package's files
    runs: dict[str, list[dict]] = {"no_cache": [], "writing_cache": [], "from_cache": []}
    entry_bytes = 0
    for _ in range(args.repeats):
        folder = tempfile.mkdtemp(prefix="crosslmm-startup-")
        try:
            runs["no_cache"].append(_open(package, "off"))
            runs["writing_cache"].append(_open(package, folder))
            runs["from_cache"].append(_open(package, folder))
            entry_bytes = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    seconds = {name: median(r["seconds"] for r in rows) for name, rows in runs.items()}
    size = sum(f.stat().st_size for f in package.iterdir() if f.is_file())
    return {
        "package_bytes": size,
        "cache_bytes": entry_bytes,
        "open_no_cache_s": seconds["no_cache"],
        "open_writing_cache_s": seconds["writing_cache"],
        "open_from_cache_s": seconds["from_cache"],
        "from_cache_over_no_cache": seconds["from_cache"] / seconds["no_cache"],
        "loaded_from": {name: rows[-1]["loaded_from"] for name, rows in runs.items()},
    }
