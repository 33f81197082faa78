"""The GPU check's steps (``gpu_check.py`` runs them in order).

Each takes the ``Check`` and returns ``figures`` (everything measured) and a
``headline`` (what the summary prints); it raises to fail and ``CannotRunHereError``
to skip. Heavy work runs in child processes through ``check.run``, with the
interpreter ``install`` chose, from ``--out`` (so the installed copy of this
project is the one that runs, not the work tree).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from pathlib import Path
from statistics import median

from .gpu_check_run import REPO, CannotRunHereError, Check, Step
from .gpu_install import install

TORCH_PROBE = """
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "available": cuda,
                  "device": torch.cuda.get_device_name() if cuda else None,
                  "cudnn": torch.backends.cudnn.version() if cuda else None}))
"""
EMBEDDED_FP32 = """
from crosslmm_edge.demo import embedded_package
print(embedded_package(log=lambda message: None))
"""
# ONNX Runtime logs where each node runs (verbose level) while a session starts.
PLACEMENT = """
import os, sys, tempfile
import onnxruntime as ort
from crosslmm_edge.runtime.backends.ort_backend import load_cuda_libraries
path, provider = sys.argv[1], sys.argv[2]
providers = ["CPUExecutionProvider"]
if provider == "cuda":
    load_cuda_libraries(ort)
    providers.insert(0, "CUDAExecutionProvider")
options = ort.SessionOptions()
options.log_severity_level, options.log_verbosity_level = 0, 0
with tempfile.TemporaryFile("w+") as log:  # the C++ logger writes to fd 2
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        ort.InferenceSession(path, options, providers=providers)
    finally:
        os.dup2(saved, 2)
    log.seek(0)
    print("".join(line for line in log if "VerifyEachNodeIsAssignedToAnEp" in line))
"""
PLACED = re.compile(r"placed on \[(\w+)\]\. Number of nodes: (\d+)")
NODE = re.compile(r"\]\s{2,}(\S+) \(")  # "  OpType (node name)" under a "placed on" line
TESTS = ("tests/test_cuda_real.py", "tests/test_ort_cuda_real.py")
CUDA_GRAPHS = (
    "not tried: ORT's CUDA graphs need fixed input shapes and every input on the device; "
    "our decode step binds the KV cache as a view that grows by one row per step, and "
    "input ids and positions from the host"
)


def environment(check: Check) -> dict:
    """The machine: GPU and driver (nvidia-smi), Python, glibc, torch and its CUDA."""
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "glibc": "-".join(platform.libc_ver()),
    }
    if shutil.which("nvidia-smi"):
        query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        info["gpu"] = check.run("nvidia-smi", ["nvidia-smi", *query]).strip()
    info["torch"] = json.loads(check.run("torch", ["python", "-c", TORCH_PROBE]))
    check.report["device"] = info.get("gpu") or f"CPU ({platform.processor() or 'unknown'})"
    if check.provider == "cuda" and not info["torch"]["available"]:
        raise RuntimeError(f"PyTorch sees no CUDA device: {info}")
    headline = {"gpu": info.get("gpu", "none"), "python": info["python"]}
    headline["torch"] = f"{info['torch']['torch']} (CUDA {info['torch']['cuda']})"
    return {"figures": info, "headline": headline}


def tests(check: Check) -> dict:
    """The real-CUDA tests; on a GPU none may skip."""
    argv = ["python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *TESTS]
    output = check.run("tests", argv, cwd=REPO)
    counts = pytest_counts(output)
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    if check.provider == "cuda" and counts.get("skipped"):
        raise RuntimeError(f"{counts} on the GPU: {skips}")
    return {"figures": {"counts": counts, "skips": skips}, "headline": counts}


def pytest_counts(output: str) -> dict[str, int]:
    """``{"passed": 5, "skipped": 2}`` from pytest's last summary line."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skip)", line)]
    if not lines:
        return {}
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def embedded(check: Check) -> dict:
    """``ask --json`` on each precision of the embedded model, on the CPU and on the
    provider: fp32 must give the CPU's tokens, the others the right answers (or the CPU's
    tokens), and the JSON must name the provider that ran."""
    from ..runtime.package.manifest import load_manifest

    package = embedded_all_precisions(check)
    video = check.work / "scene.mp4"
    synth = ["python", "-m", "crosslmm_edge", "synth-video", "--out", str(video), "--json"]
    qa = json.loads(check.run("synth-video", [*synth, "--seed", "3"]))["qa"]
    results, ok = {}, True
    for label in load_manifest(package).labels():
        backend, precision = label.split("/")
        if backend != "onnx":  # onnx-trt/*: TensorRT's Q/DQ graphs
            continue
        runs = {p: _ask(check, package, video, qa, p, precision) for p in ("cpu", check.provider)}
        results[precision] = compare_answers(runs["cpu"], runs[check.provider], qa, check.provider)
        ok &= results[precision]["ok"]
    headline = {
        p: f"{r['correct']} correct, CPU tokens {r['same_tokens_as_cpu']}, ran on {r['ran_on']}"
        for p, r in results.items()
    }
    if not ok:
        raise RuntimeError(f"embedded answers: {headline}")
    return {"figures": results, "headline": headline}


def embedded_all_precisions(check: Check) -> Path:
    """The embedded model with fp32 (exported once, cached), fp16 and INT8 graphs."""
    from ..models import embedded_model_dir

    package = check.work / "embedded"
    if not (package / "manifest.json").is_file():
        fp32 = Path(check.run("export-fp32", ["python", "-c", EMBEDDED_FP32]).strip())
        shutil.rmtree(package, ignore_errors=True)
        shutil.copytree(fp32, package)
    cli = ["python", "-m", "crosslmm_edge"]
    labels = json.loads((package / "manifest.json").read_text())["graphs"]["llm"]["artifacts"]
    held = {f"{a['backend']}/{a['precision']}" for a in labels}
    if "onnx/fp16" not in held:
        add = ["export", str(embedded_model_dir()), "--out", str(package), "--add"]
        check.run("export-fp16", [*cli, *add, "--dtype", "fp16"])
    if "onnx/int8" not in held:
        quantize = ["quantize", str(package), "--in-place", "--calib-count", "4"]
        check.run("quantize", [*cli, *quantize])
    return package


def _ask(
    check: Check, package: Path, video: Path, qa: list[dict], provider: str, precision: str
) -> dict:
    argv = ["python", "-m", "crosslmm_edge", "ask", str(package), "--video", str(video)]
    argv += ["--provider", provider, "--precision", precision, "--max-new-tokens", "8", "--json"]
    for item in qa:
        argv += ["--question", item["question"]]
    return json.loads(check.run(f"ask-{provider}-{precision}", argv).strip().splitlines()[-1])


def compare_answers(cpu: dict, other: dict, qa: list[dict], provider: str) -> dict:
    """One precision's verdict from two ``ask --json`` objects and the true answers."""
    from ..calibration.world.synthetic_world import normalise_answer

    def correct(run: dict) -> int:
        pairs = zip(run["answers"], qa, strict=True)
        return sum(normalise_answer(a["answer"]) == item["answer"] for a, item in pairs)

    same = [a["token_ids"] for a in cpu["answers"]] == [a["token_ids"] for a in other["answers"]]
    precision = {a["precision"] for a in other["artifacts"]}
    ran_on = other.get("execution", {}).get("provider")
    right = correct(other)
    good = same if precision == {"fp32"} else same or right == len(qa)
    return {
        "ok": good and ran_on == provider,
        "same_tokens_as_cpu": same,
        "correct": f"{right}/{len(qa)}",
        "cpu_correct": f"{correct(cpu)}/{len(qa)}",
        "ran_on": ran_on,
        "artifacts": sorted(precision),
        "answers": [a["answer"] for a in other["answers"]],
        "decode_tok_s": median(a["decode_tokens_per_s"] for a in other["answers"]),
    }


def placement(check: Check) -> dict:
    """Which provider runs each node of the embedded model's fp32 and fp16 graphs: nodes
    that fall back to the CPU cost host copies on every step."""
    from ..runtime.package.manifest import load_manifest

    package = check.work / "embedded"
    if not (package / "manifest.json").is_file():
        raise CannotRunHereError("needs the embedded step's package")
    manifest = load_manifest(package)
    figures, headline = {}, {}
    for precision in ("fp32", "fp16"):
        for role, graph in manifest.graphs.items():
            artifact = graph.find("onnx", precision)
            if artifact is None:
                continue
            argv = ["python", "-c", PLACEMENT, str(package / artifact.file), check.provider]
            placed = parse_placements(check.run(f"placement-{role}-{precision}", argv))
            figures[f"{role} {precision}"] = placed
            headline[f"{role} {precision}"] = "; ".join(
                f"{ep.removesuffix('ExecutionProvider')} {p['nodes']}"
                + (f" ({', '.join(sorted(p['ops']))})" if p["ops"] else "")
                for ep, p in placed.items()
            )
    return {"figures": figures, "headline": headline}


def parse_placements(log: str) -> dict[str, dict]:
    """``{provider: {"nodes": count, "ops": {op type: count}}}`` from ONNX Runtime's
    verbose "Node placements" lines (ops are listed only when providers share a graph)."""
    placements: dict[str, dict] = {}
    current: dict | None = None
    for line in log.splitlines():
        placed = PLACED.search(line)
        node = NODE.search(line)
        if placed:
            current = placements.setdefault(placed[1], {"nodes": int(placed[2]), "ops": {}})
        elif current is not None and node:
            current["ops"][node[1]] = current["ops"].get(node[1], 0) + 1
    return placements


def _bench(check: Check, suite: str, extra: list[str]) -> dict:
    """``crosslmm-edge bench --suite SUITE`` on the check's model; its JSON report."""
    if check.provider == "cuda":
        model, precision = "preset:qwen2.5-0.5b", "fp16"
    else:  # the dry run: the embedded model the embedded step exported
        model, precision = str(check.work / "embedded"), "fp32"
        if not (check.work / "embedded" / "manifest.json").is_file():
            raise CannotRunHereError("the CPU dry run benchmarks the embedded step's package")
    report = check.out / f"{suite}.json"
    argv = ["python", "-m", "crosslmm_edge", "bench", "--suite", suite, "--model", model]
    argv += ["--provider", check.provider, "--precision", precision, "--json", str(report)]
    check.run(f"bench-{suite}", [*argv, "--workdir", str(check.work / "bench"), *extra])
    return json.loads(report.read_text())


def decode(check: Check) -> dict:
    """Tokens/s of ours against transformers SDPA and the bandwidth limit, one run."""
    gpu = check.provider == "cuda"
    sizes = ["--prompt-tokens", "32", "--new-tokens", "128"] if gpu else ["--new-tokens", "16"]
    data = _bench(check, "decode", [*sizes, "--repeats", "3" if gpu else "1"])
    figures = data["decode"]
    headline = {
        "ours tok/s": figures["ours_tok_s"],
        "transformers SDPA tok/s": figures["transformers_sdpa_tok_s"],
        "ours / transformers SDPA": figures["ours_over_transformers_sdpa"],
        "bandwidth limit tok/s": figures["bandwidth_limit_tok_s"],
        "fraction of bandwidth": figures["bandwidth_fraction"],
        "read bandwidth GB/s": data["machine"]["bandwidth_gbs"],
    }
    return {"figures": data, "headline": headline, "cuda_graphs": CUDA_GRAPHS}


def prefill(check: Check) -> dict:
    """CrossLMM against the full-token layout at 32 and 64 frames (2 and 4 on the CPU)."""
    frames = ["32", "64"] if check.provider == "cuda" else ["2", "4"]
    data = _bench(check, "prefill", ["--prefill-frames", *frames])
    figures = data["prefill"]
    headline = {}
    for n in frames:
        for layout in ("crosslmm_ours", "full_ours", "full_sdpa"):
            point = figures["points"][layout].get(n, figures["points"][layout].get(int(n), {}))
            headline[f"{layout} {n} frames s"] = point.get("seconds", point.get("error"))
        for ratio in ("time", "added_mem"):
            headline[f"CrossLMM / full SDPA {ratio}, {n}"] = figures.get(
                f"cross_over_full_{ratio}_{n}"
            )
    return {"figures": data, "headline": headline}


STEPS: dict[str, Step] = {
    "environment": environment,
    "install": install,
    "tests": tests,
    "embedded": embedded,
    "placement": placement,
    "decode": decode,
    "prefill": prefill,
}
