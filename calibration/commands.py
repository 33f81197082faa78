"""``synth-video`` and ``eval``: the synthetic world from the command line.

Cheap to import: numpy, the world and the model are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth-video`` and ``eval``."""
    synth = subparsers.add_parser(
        "synth-video", help="write a synthetic video and print its questions and answers"
    )
    synth.add_argument("--out", required=True, help="mp4 file to write")
    synth.add_argument("--seed", type=int, required=True, help="scene seed")
    synth.add_argument("--frames", type=int, default=8, help="frames in the video (default 8)")
    synth.add_argument("--json", action="store_true", help="print one JSON object")
    synth.set_defaults(func=run_synth_video)

    evaluate = subparsers.add_parser(
        "eval", help="accuracy of a model on synthetic videos, overall and per question type"
    )
    evaluate.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint folder or package (default: the embedded tiny model)",
    )
    evaluate.add_argument(
        "--synthetic",
        type=int,
        required=True,
        metavar="N",
        help="number of videos (4 questions each)",
    )
    evaluate.add_argument("--seed", type=int, default=1, help="stream of videos (default 1)")
    evaluate.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    evaluate.add_argument(
        "--precision",
        default=None,
        help="package artifacts: fp32, fp16, int8 or int4 (default: best)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=run_eval)


def run_synth_video(args: argparse.Namespace) -> int:
    """Write the scene ``--seed`` to ``--out`` and print its ground truth."""
    from .evaluate import write_scene_video

    out = Path(args.out)
    if args.frames <= 0:
        raise UserError(f"--frames must be positive, got {args.frames}")
    if not out.parent.is_dir():
        raise UserError(f"output folder does not exist: {out.parent}")
    if out.is_dir():
        raise UserError(f"output path is a folder: {out}")
    qas = write_scene_video(out, args.seed, 0, args.frames)
    if args.json:
        items = [{"question": qa.question, "answer": qa.answer, "type": qa.qtype} for qa in qas]
        print(json.dumps({"video": str(out), "qa": items}))
    else:
        print(f"wrote {out}")
        for qa in qas:
            print(f"  {qa.question}  ->  {qa.answer}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate MODEL on ``--synthetic`` videos of stream ``--seed``."""
    if args.synthetic <= 0:
        raise UserError(f"--synthetic must be a positive number of videos, got {args.synthetic}")
    if args.frames <= 0:
        raise UserError(f"--frames must be positive, got {args.frames}")
    from ..assistants import open_assistant
    from ..models import embedded_model_dir
    from .evaluate import evaluate_assistant

    model = args.model if args.model is not None else str(embedded_model_dir())
    assistant = open_assistant(model, precision=args.precision)

    def progress(index: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\r{index + 1}/{args.synthetic} videos", end="", file=sys.stderr, flush=True)

    result = evaluate_assistant(assistant, args.synthetic, args.seed, args.frames, progress)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"model: {model}")
    print(f"videos: {result.n_videos} (seed {args.seed}), questions: {result.n_questions}")
    for qtype, accuracy in result.per_type.items():
        print(f"  {qtype:<10} {accuracy:6.1%}")
    print(f"  {'overall':<10} {result.accuracy:6.1%}")
    return 0
