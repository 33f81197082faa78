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


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def run_quantize(args: argparse.Namespace) -> int:
    """Quantize PACKAGE into ``--out`` or in place; print what was kept in float."""
    from .quantize import QuantizeOptions
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
    )
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"wrote INT8 graphs to {summary['package']} (recipe {summary['recipe']})")
    for role, modules in summary["quantized_modules"].items():
        print(f"  {role}: {len(modules)} weight MatMuls in INT8")
    for group, reason in summary["kept_float"].items():
        print(f"  kept in float: {group} ({reason})")
    search = summary.get("search")
    if search:
        print(f"  --max-drift {search['max_drift_points']:g}: worst accuracy drop per group alone")
        for group, points in search["sensitivity_points"].items():
            print(f"    {group:<50} {points:5.1f} points")
    print(f"  cross K/V: {summary['cross_kv']}; calibration set {summary['calibration_sha256']}")
    if summary["trt_int8"]:
        print("  onnx-trt/int8: the same Q/DQ on the fp16 graphs, for `build --precision int8`")
    for frames, sizes in summary["cross_kv_memory_bytes"].items():
        listing = ", ".join(f"{kind} {size / 2**20:.1f} MiB" for kind, size in sizes.items())
        print(f"  cross K/V memory at {frames} frames: {listing}")
    return 0


def _drift_items(args: argparse.Namespace, workdir: Path):
    from .calib_data import expand_paths, generic_questions
    from .drift_run import DriftItem
    from .evaluate import write_scene_video

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
    from .drift_run import run_drift
    from .progress import progress_bar

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
        from .drift_report import html_report

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
