"""Export a CrossLMM-2B-shaped model (spec sizes, random weights): memory, time, size.

    python3 -m crosslmm_edge.benchmarks.export_2b [--workdir DIR] [--frames 32] [--max-context 4096]
                                   [--keep] [--check-llm]

Sizes (spec section 2): SigLIP so400m-patch14-384 (1152 wide, 27 layers, 729
patches), Qwen2.5-1.5B (1536 wide, 28 layers, 12 heads, 2 KV heads, MLP 8960,
vocab 151936, tied), 9 tokens per frame, a DCAL every 4 layers (7 DCALs).
The random checkpoint is written first (not timed); then ``crosslmm-edge
export`` runs in a child process whose peak RSS and wall time are reported
with the package's size per file, and ``lint-trt`` runs on it. Needs ~16 GB
of disk and ~9 GB of RAM (13 GB with ``--check-llm``).

Measured 2026-11-25 on this 2-core, 24 GiB machine (nice 10, other jobs
running): 105–149 s wall, peak RSS 8.3 GiB, package 7.60 GiB
(llm.onnx.data 6141 MiB, vision_encoder.onnx.data 1575 MiB, pooling 58 MiB);
one-chunk check of llm.onnx against PyTorch: max abs error ≤ 1.5e-5.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAKE_CHECKPOINT = """
import sys
from crosslmm_edge.export.checkpoints.random_model import random_checkpoint
random_checkpoint(sys.argv[1], "crosslmm-2b", num_frames=int(sys.argv[2]))
"""


# Runs the CLI in this child and prints its own peak RSS (KiB on Linux) last.
EXPORT = """
import resource, sys
from crosslmm_edge.cli import main
code = main(sys.argv[1:])
print(f"peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
sys.exit(code)
"""


# One LLM chunk of each kind through ONNX Runtime and PyTorch (needs ~13 GB of RAM).
CHECK_LLM = """
import sys, torch, onnxruntime as ort
from crosslmm_edge.export.checkpoints.checkpoint import load_checkpoint
from crosslmm_edge.export.graphs.graph_specs import random_inputs
from crosslmm_edge.export.graphs.verify import pytorch_reference
from crosslmm_edge.runtime.inference.compare import compare
from crosslmm_edge.runtime.model.contract import ExportLimits, graph_specs, llm_sizes
from crosslmm_edge.runtime.package.manifest import load_manifest
model = load_checkpoint(sys.argv[1])
manifest = load_manifest(sys.argv[2])
spec = graph_specs(model.config, ExportLimits(**manifest.limits))["llm"]
session = ort.InferenceSession(sys.argv[2] + "/llm.onnx", providers=["CPUExecutionProvider"])
generator = torch.Generator().manual_seed(0)
for chunk in [(3, 0, 0, 1), (1, 0, 5, 1), (0, 1, 4, 1)]:  # prefill, decode, visual-only
    sizes = llm_sizes(model.config, *chunk)
    inputs = random_inputs(spec, sizes, model.config.text_config.vocab_size, generator)
    with torch.no_grad():
        expected = pytorch_reference("llm", model)(*inputs.values())
    actual = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    worst = max(compare(e.numpy(), a)[0] for e, a in zip(expected, actual))
    print(f"llm chunk text,frames,past,mem={chunk}: max abs error {worst:.2e} over all outputs")
"""


def _run_child(code: str, *args: str) -> tuple[float, str]:
    """Wall seconds and stdout of ``python -c code args``; raises if it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, stdout=subprocess.PIPE, text=True
    )
    print(done.stdout, end="")
    return time.perf_counter() - start, done.stdout


def _sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where checkpoint and package go (default: a temp dir)")
    parser.add_argument("--frames", type=int, default=32, help="--max-frames of the export")
    parser.add_argument("--max-context", type=int, default=4096)
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    parser.add_argument(
        "--check-llm", action="store_true", help="run llm.onnx against PyTorch (~13 GB RAM)"
    )
    args = parser.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="export-2b-", dir=args.workdir))
    checkpoint, package = root / "ckpt-2b", root / "pkg-2b"
    try:
        seconds, _ = _run_child(MAKE_CHECKPOINT, str(checkpoint), str(args.frames))
        print(f"random 2B checkpoint written in {seconds:.0f} s")
        seconds, out = _run_child(
            EXPORT,
            "export",
            str(checkpoint),
            "--out",
            str(package),
            "--max-frames",
            str(args.frames),
            "--max-context",
            str(args.max_context),
        )
        peak_gib = int(out.rsplit("peak_rss_kib=", 1)[1]) / 2**20
        sizes = _sizes(package)
        for name, size in sizes.items():
            print(f"  {name:<28} {size / 2**20:>10.1f} MiB")
        print(
            f"export: {seconds:.0f} s wall, peak RSS {peak_gib:.1f} GiB, "
            f"package {sum(sizes.values()) / 2**30:.2f} GiB"
        )
        subprocess.run(
            [sys.executable, "-m", "crosslmm_edge", "lint-trt", str(package)], check=False
        )
        if args.check_llm:
            _run_child(CHECK_LLM, str(checkpoint), str(package))
    finally:
        if args.keep:
            print(f"kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
