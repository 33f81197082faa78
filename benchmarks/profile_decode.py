"""Where a decode step's time goes: ONNX Runtime's profiler at several past lengths.

``python -m crosslmm_edge.benchmarks.profile_decode PKG --past 128 4086`` prints,
per past length, the median step (``model_run``) time, the nodes run and the kernel time per
op type, per block (decoder layers, DCAL layers, the rest, by the module path the exporter
recorded on each node; ``unattributed`` for nodes ONNX Runtime made itself) and of the
slowest nodes, per step, over the last ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import onnx

from ..export.graphs.graph_passes import NAME_SCOPES
from ..runtime.backends.ort_backend import OrtBackend
from ..runtime.inference.pipeline import Pipeline
from ..runtime.model.contract import LLM
from .suite_context import decode_steps, filled_cache


def profile_past(package: Path, precision: str | None, past: int, steps: int, threads: int) -> dict:
    """Profile ``steps`` decode steps after ``past`` cached positions."""
    with tempfile.TemporaryDirectory() as folder:
        backend = OrtBackend("cpu", threads, profile_prefix=str(Path(folder) / "llm"))
        pipeline = Pipeline(package, precision=precision, engine=backend, verify_hashes=False)
        cache, text, logits = filled_cache(pipeline, past, steps)
        decode_steps(pipeline, cache, text, logits, steps)
        trace = pipeline.sessions[LLM].session.end_profiling()  # type: ignore[attr-defined]
        events = json.loads(Path(trace).read_text())
        graph = pipeline.package.path(pipeline.artifacts.by_role[LLM], verify=False)
    return summarize(events, steps, node_blocks(graph))


def node_blocks(graph: Path) -> dict[str, str]:
    """Node name -> ``decoder``, ``dcal`` or ``other``, from each node's module path."""
    blocks = {}
    for node in onnx.load(str(graph), load_external_data=False).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), "")
        blocks[node.name] = (
            "dcal" if ".dcal." in scopes else "decoder" if ".layers." in scopes else "other"
        )
    return blocks


def summarize(events: list[dict], steps: int, blocks: dict[str, str] | None = None) -> dict:
    """Per-step kernel ms by op type and by block (``blocks``: node name -> block), nodes
    run and the 12 slowest nodes, over the last ``steps`` runs."""
    runs = [e for e in events if e.get("name") == "model_run"][-steps:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    kernels = 0  # kernel launches in the windows: nodes run per step, times the runs
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if any(start <= event["ts"] <= end for start, end in windows):
            ms = event["dur"] / 1000 / len(runs)
            by_op[event["args"]["op_name"]] += ms
            node = event["name"].removesuffix("_kernel_time")
            by_node[node] += ms
            by_block[(blocks or {}).get(node, "unattributed")] += ms
            kernels += 1
    slowest = sorted(by_node.items(), key=lambda item: -item[1])[:12]
    return {
        "step_ms": statistics.median(e["dur"] for e in runs) / 1000,
        "kernel_ms": sum(by_op.values()),
        "nodes_per_step": kernels / len(runs),
        "by_op_ms": dict(sorted(by_op.items(), key=lambda item: -item[1])),
        "by_block_ms": dict(sorted(by_block.items(), key=lambda item: -item[1])),
        "slowest_nodes_ms": dict(slowest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("package", type=Path)
    parser.add_argument("--precision", help="fp32, int8, int4 (default: the runtime's choice)")
    parser.add_argument("--past", type=int, nargs="+", default=[128, 4086])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    report = {
        past: profile_past(args.package, args.precision, past, args.steps, args.threads)
        for past in args.past
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
