"""``quantize`` and ``drift``: INT8 artifacts for a package, and what they cost.

Cheap to import: numpy, onnx and ONNX Runtime are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``quantize`` and ``drift``."""
    quantize = subparsers.add_parser(
        "quantize", help="add INT8 graphs (Q/DQ, calibrated on videos) to a package"
    )
    quantize.add_argument("package", help="model package folder with fp32 graphs")
    quantize.add_argument(
        "--calib",
        nargs="+",
        default=None,
        metavar="VIDEO_OR_DIR",
        help="calibration videos (files or folders; default: synthetic scenes)",
    )
    quantize.add_argument(
        "--calib-count", type=int, default=16, help="videos to calibrate on (default 16)"
    )
    quantize.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    quantize.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per calibration video (default: the most the package was exported for)",
    )
    where = quantize.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", default=None, help="write a copy of the package with INT8 added")
    where.add_argument("--in-place", action="store_true", help="add INT8 to PACKAGE itself")
    quantize.add_argument("--recipe", default="default", help="node selection (default: default)")
    quantize.add_argument(
        "--exclude", nargs="+", default=[], metavar="PATTERN", help="module-path globs kept float"
    )
    quantize.add_argument(
        "--float-cross-kv", action="store_true", help="keep the cross K/V memory in float"
    )
    quantize.add_argument(
        "--max-drift",
        type=float,
        default=None,
        metavar="POINTS",
        help="search the largest INT8 set whose accuracy stays within POINTS of FP32",
    )
    quantize.add_argument(
        "--search-videos", type=int, default=50, help="synthetic videos per --max-drift trial"
    )
    quantize.add_argument(
        "--no-trt-int8",
        action="store_true",
        help="skip the INT8 graphs for TensorRT (onnx-trt/int8, on the fp16 graphs)",
    )
    quantize.add_argument(
        "--precision",
        choices=("int8", "int4"),
        default="int8",
        help="int8: Q/DQ graphs (onnx/int8); int4: 4-bit LLM weights (onnx/int4)",
    )
    _int4_arguments(quantize)
    quantize.add_argument("--json", action="store_true", help="print one JSON object")
    quantize.set_defaults(func=run_quantize)

    drift = subparsers.add_parser(
        "drift", help="compare two packages or precisions stage by stage on the same videos"
    )
    drift.add_argument("ref", help="reference: PKG or PKG@precision (e.g. pkg@fp32)")
    drift.add_argument("test", help="test: PKG or PKG@precision (e.g. pkg@int8)")
    drift.add_argument("--videos", nargs="+", default=[], metavar="VIDEO_OR_DIR")
    drift.add_argument("--synthetic", type=int, default=0, metavar="N", help="synthetic videos")
    drift.add_argument("--seed", type=int, default=1, help="synthetic stream (default 1)")
    drift.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    drift.add_argument("--html", default=None, metavar="FILE", help="write an offline HTML report")
    drift.add_argument(
        "--max-drift",
        type=float,
        default=None,
        metavar="POINTS",
        help="budget in points: worst accuracy drop per question type (ground truth) or share "
        "of changed answers (no ground truth); exit 1 when over it (default: report against 1)",
    )
    drift.set_defaults(func=run_drift_command)


def _int4_arguments(quantize: argparse.ArgumentParser) -> None:
    """The ``--precision int4`` options (docs/quantization.md)."""
    from .int4.options import (
        ALGORITHMS,
        ATTENTION_CHOICES,
        HEAD_CHOICES,
        KV_CACHE_CHOICES,
        Int4Options,
    )

    default = Int4Options()
    quantize.add_argument(
        "--block-size",
        type=int,
        default=default.block_size,
        help=f"int4: weights per scale along K, 32, 64 or 128 (default {default.block_size})",
    )
    quantize.add_argument(
        "--asymmetric", action="store_true", help="int4: zero points per block (ONNX Runtime only)"
    )
    quantize.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default=default.algorithm,
        help=(
            "int4: rtn (round to nearest), awq (activation-aware), hqq (ONNX Runtime's "
            "half-quadratic solver; onnx/int4 only) or gptq (error-correcting, from "
            "Gram matrices calibration keeps: 4 bytes x width^2 per LLM activation) "
            f"(default {default.algorithm})"
        ),
    )
    quantize.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        default=default.head,
        help=f"int4: storage of the LM head (default {default.head})",
    )
    quantize.add_argument(
        "--head-block-size",
        type=int,
        default=default.head_block_size,
        help=(
            "int4: the LM head's weights per scale along K, 32, 64 or 128 "
            f"(default {default.head_block_size})"
        ),
    )
    quantize.add_argument(
        "--embedding",
        choices=HEAD_CHOICES,
        default=default.embedding,
        help=f"int4: the token embedding (ONNX Runtime only; default {default.embedding})",
    )
    quantize.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default=default.attention,
        help=(
            "int4: onnx/int4's decoder attention, ONNX Runtime's fused GroupQueryAttention "
            "(CPU provider; its CUDA kernel is fp16-only) or the exported standard ops "
            f"(default {default.attention})"
        ),
    )
    quantize.add_argument(
        "--kv-cache",
        choices=KV_CACHE_CHOICES,
        help=(
            "int4: element type of the LLM's KV cache; float16 (the default with "
            "--attention gqa) halves the bytes a long-context step reads; the standard "
            "ops keep float32"
        ),
    )


def _int4_options(args: argparse.Namespace):
    from .int4.options import Int4Options

    if args.precision != "int4":
        return None
    return Int4Options(
        args.block_size,
        not args.asymmetric,
        args.algorithm,
        args.head,
        args.embedding,
        args.attention,
        args.head_block_size,
        kv_cache=args.kv_cache,
    )


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def run_quantize(args: argparse.Namespace) -> int:
    """Quantize PACKAGE into ``--out`` or in place; print what was kept in float."""
    from .int8.quantize import QuantizeOptions
    from .quantize_package import quantize_package

    options = QuantizeOptions(args.recipe, tuple(args.exclude), not args.float_cross_kv)
    summary = quantize_package(
        Path(args.package),
        Path(args.out) if args.out else None,
        options,
        args.calib,
        args.calib_count,
        args.seed,
        args.max_drift,
        args.search_videos,
        _warn,
        trt_int8=not args.no_trt_int8,
        frames=args.frames,
        int4=_int4_options(args),
    )
    if args.json:
        print(json.dumps(summary))
        return 0
    precision = summary["precision"]
    print(f"wrote {precision.upper()} graphs to {summary['package']} (recipe {summary['recipe']})")
    for role, modules in summary["quantized_modules"].items():
        print(f"  {role}: {len(modules)} weight MatMuls quantized")
    if precision == "int4":
        _print_int4(summary["llm_build"])
    for group, reason in summary["kept_float"].items():
        wider = precision == "int4" and reason.startswith(("int8:", "float:"))
        print(f"  kept {'wider' if wider else 'in float'}: {group} ({reason})")
    search = summary.get("search")
    if precision == "int4":
        _print_int4_search(summary["llm_build"].get("int4_search"))
    elif search:
        print(f"  --max-drift {search['max_drift_points']:g}: worst accuracy drop per group alone")
        for group, points in search["sensitivity_points"].items():
            print(f"    {group:<50} {points:5.1f} points")
    print(f"  cross K/V: {summary['cross_kv']}; calibration set {summary['calibration_sha256']}")
    if summary["trt_int8"]:
        print(f"  onnx-trt/{precision}: the same on the fp16 graphs, for TensorRT")
    for frames, sizes in summary["cross_kv_memory_bytes"].items():
        listing = ", ".join(f"{kind} {size / 2**20:.1f} MiB" for kind, size in sizes.items())
        print(f"  cross K/V memory at {frames} frames: {listing}")
    return 0


def _head_blocks(build: dict) -> str:
    """A quantized head's block size as printed."""
    size = build["lm_head_block_size"]  # None for a float head
    return f" in blocks of {size}" if size else ""


def _print_int4(build: dict) -> None:
    """What the INT4 LLM holds: algorithm, blocks, storage per module kind."""
    kind = "symmetric" if build["symmetric"] else "asymmetric"
    print(
        f"  llm: {build['algorithm'].upper()}, blocks of {build['block_size']} ({kind}), "
        f"LM head {build['lm_head']}{_head_blocks(build)}, embedding {build['embedding']}"
    )
    for storage, modules in build["modules_by_storage"].items():
        print(f"    {storage}: {len(modules)} modules")
    for name in ("awq", "gptq"):
        if f"{name}_loss_vs_rtn" in build:
            print(
                f"    {name.upper()} output error on calibration rows: "
                f"{build[f'{name}_loss_vs_rtn']:.3f} of round-to-nearest's"
            )
    fused = build.get("ort_fusions", {}).get("group_query_attention", 0)
    attention = f"GroupQueryAttention in {fused} layers" if fused else "the exported ops"
    if build.get("grouped_decode_from_past") is not None:
        attention += f"; decode steps in query rows from {build['grouped_decode_from_past']} past"
    if fused:
        attention += f"; KV cache {build.get('kv_cache', 'float32')}"
    print(f"  llm attention (onnx/int4): {attention}")
    if build["cross_kv_scales"]:
        print("  llm cross K/V (onnx/int4): int8 memory, dequantized once per video when bound")


def _print_int4_search(search: dict | None) -> None:
    """Where ``--max-drift`` landed: the drop and bytes of each mix it tried."""
    if not search:
        return
    print(f"  --max-drift {search['max_drift_points']:g}: mixes tried (worst drop, LLM bytes)")
    for trial in search["trials"]:
        mib = trial["llm_bytes"] / 2**20
        print(f"    {trial['drop']:5.1f} points  {mib:8.1f} MiB  {trial['mix']}")
    landed = search["landed"]
    print(f"  landed on: {landed['drop']:.1f} points, {landed['llm_bytes'] / 2**20:.1f} MiB")


def _drift_items(args: argparse.Namespace, workdir: Path):
    from .collect.calib_data import expand_paths, generic_questions
    from .drift.drift_run import DriftItem
    from .world.evaluate import write_scene_video

    items = []
    if args.videos:
        for rank, path in enumerate(expand_paths(args.videos)):
            questions = generic_questions(rank)
            none = (None,) * len(questions)
            items.append(DriftItem(path, questions, none, none))
    for index in range(args.synthetic):
        path = workdir / f"scene-{index}.mp4"
        qas = write_scene_video(path, args.seed, index, 8)
        items.append(
            DriftItem(
                path,
                tuple(q.question for q in qas),
                tuple(q.answer for q in qas),
                tuple(q.qtype for q in qas),
            )
        )
    return items


def run_drift_command(args: argparse.Namespace) -> int:
    """Compare REF and TEST; print a summary, write ``--json`` / ``--html``."""
    import tempfile

    from ..runtime.package.files import write_text_atomic
    from .collect.progress import progress_bar
    from .drift.drift_run import run_drift

    if args.synthetic < 0:
        raise UserError(f"--synthetic must not be negative, got {args.synthetic}")
    if args.max_drift is not None and not args.max_drift >= 0:
        raise UserError(f"--max-drift must be a number of points >= 0, got {args.max_drift}")
    if not args.videos and not args.synthetic:
        raise UserError("give videos to compare on: --videos VIDEO_OR_DIR ... or --synthetic N")
    for target in (args.json, args.html):
        if target and not Path(target).resolve().parent.is_dir():
            raise UserError(f"cannot write {target}: its folder does not exist")
    with tempfile.TemporaryDirectory(prefix="crosslmm-drift-") as temp:
        items = _drift_items(args, Path(temp))
        with progress_bar(len(items), "drift", "video") as bar:
            result = run_drift(args.ref, args.test, items, bar.update, _warn, args.max_drift)
    report = result.to_json()
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    if args.html:
        from .drift.drift_report import html_report

        write_text_atomic(args.html, html_report(report, result.thumbnails))
    print_summary(report)
    # Only a budget the caller named fails the command (a CI gate); the default only reports.
    over = not report["verdict"]["within"]
    return 1 if over and args.max_drift is not None else 0


def print_summary(report: dict) -> None:
    """The drift report in a few lines."""
    print(
        f"drift of {report['test']} against {report['ref']}: {report['videos']} videos, "
        f"{report['questions']} questions"
    )
    for name, stage in report["stages"].items():
        sqnr = "inf" if stage["sqnr_db"] is None else f"{stage['sqnr_db']:.1f}"
        print(
            f"  {name:<18} cosine_min {stage['cosine_min']:.5f}  SQNR {sqnr} dB  "
            f"rel_l2 {stage['rel_l2']:.2e}  max_abs {stage['max_abs']:.2e}"
        )
    e2e = report["end_to_end"]
    print(
        f"  next-token KL {e2e['kl_mean']:.2e}  top-1 agreement {e2e['top1_agreement']:.2%}  "
        f"greedy exact match {e2e['greedy_exact_match']:.2%}"
    )
    for side, per_type in e2e["accuracy"].items():
        listing = "  ".join(f"{q} {a:.1%}" for q, a in per_type.items())
        print(f"  accuracy {side}: {listing}")
    verdict = report["verdict"]
    word = "within" if verdict["within"] else "OVER"
    source = "--max-drift" if verdict["budget_source"] == "--max-drift" else "default budget"
    checks = "; ".join(f"{c['measure']} {c['points']:.1f}" for c in verdict["checks"])
    budget = verdict["budget_points"]
    unit = "point" if budget == 1 else "points"
    print(f"  verdict: {word} the budget of {budget:g} {unit} ({source}): {checks} points")
