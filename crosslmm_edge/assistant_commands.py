"""The ``ask`` and ``chat`` subcommands, for checkpoints and packages alike.

Nothing heavy is imported here: ``open_assistant`` picks the backend, so
``ask`` on a package never imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from .runtime.chat.assistant_types import Assistant, GenerationOptions
from .runtime.errors import UserError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or model package")
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--frames", type=int, default=None, help="frames to sample (T)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="context limit in tokens (default: the model's)",
    )
    parser.add_argument(
        "--provider",
        default=None,
        help="packages: execution provider cpu|cuda|tensorrt (default: best available)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8", "int4"),
        default=None,
        help="packages: which artifacts run (default: the best the package holds for the device)",
    )
    parser.add_argument(
        "--backend",
        default="onnx",
        help="packages: artifact backend, onnx (ONNX Runtime) or tensorrt (native engines)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ask`` and ``chat`` to the CLI."""
    ask = subparsers.add_parser(
        "ask",
        help="answer questions about a video",
        description="Answer each question in a fresh turn about "
        "the same video (the video is encoded once).",
    )
    _add_common(ask)
    ask.add_argument("--question", action="append", required=True, help="repeatable")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--logprobs", action="store_true", help="log-probability of each token")
    ask.add_argument(
        "--save-video-state",
        metavar="FILE",
        default=None,
        help="packages: save the video state and prefix cache to FILE",
    )
    ask.add_argument(
        "--video-state",
        metavar="FILE",
        default=None,
        help="packages: load the video state saved for this video and package",
    )
    ask.set_defaults(func=run_ask)
    chat = subparsers.add_parser(
        "chat",
        help="talk about a video in the terminal",
        description="Multi-turn chat. Commands: /video FILE, /reset, /quit.",
    )
    _add_common(chat)
    chat.set_defaults(func=run_chat)


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    """The decoding settings of the parsed options, validated."""
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature {args.temperature}: must be a finite number >= 0")
    if not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError("--top-p must be in (0, 1] and --top-k >= 0")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed {args.seed}: must be >= 0")
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: must be at least 1")
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        logprobs=getattr(args, "logprobs", False),
    )


def _open(args: argparse.Namespace) -> Assistant:
    from .assistants import open_assistant

    if args.max_context is not None and args.max_context < 1:
        raise UserError(f"--max-context {args.max_context}: must be at least 1")
    assistant = open_assistant(
        args.model,
        max_context=args.max_context,
        system=args.system,
        provider=args.provider,
        precision=args.precision,
        backend=args.backend,
    )
    state_in = getattr(args, "video_state", None)
    state_out = getattr(args, "save_video_state", None)
    if not (state_in or state_out):
        assistant.set_video(args.video, args.frames)
        return assistant
    from .runtime.chat.assistant import RuntimeAssistant  # a package's runtime keeps states

    if not isinstance(assistant, RuntimeAssistant):
        raise UserError("--video-state/--save-video-state need a model package")
    assistant.set_video(args.video, args.frames, state_file=state_in)
    if state_out:
        assistant.save_video_state(state_out)
    return assistant


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_ask(args: argparse.Namespace) -> int:
    """Answer every ``--question``; JSON or streamed text."""
    options = generation_options(args)
    assistant = _open(args)
    answers = []
    for question in args.question:
        if not args.json:
            print(f"Q: {question}\nA: ", end="", flush=True)
        answers.append(assistant.ask(question, options, None if args.json else _stream))
        if not args.json:
            print()
    if args.json:
        out: dict = {"answers": [a.to_json() for a in answers]}
        artifacts = getattr(assistant, "artifacts", None)
        out["artifacts"] = artifacts if artifacts is not None else "pytorch reference"
        print(json.dumps(out))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """Read questions from stdin until EOF or /quit; each continues the conversation."""
    options = generation_options(args)
    assistant = _open(args)
    print("chat: ask about the video; /video FILE, /reset, /quit", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):  # bad bytes reach the prompt, which refuses them
        sys.stdin.reconfigure(errors="surrogateescape")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        try:
            _chat_line(assistant, line, options, args.frames)
        except UserError as exc:  # a bad /video must not end the session
            print(f"error: {exc}", file=sys.stderr)
    return 0


def _chat_line(
    assistant: Assistant, line: str, options: GenerationOptions, frames: int | None
) -> None:
    if line.startswith("/video"):
        path = line[len("/video") :].strip()
        if not path:
            raise UserError("/video needs a file")
        assistant.set_video(path, frames)
        print(f"(video: {path})", file=sys.stderr)
    elif line == "/reset":
        assistant.reset()
        print("(conversation reset)", file=sys.stderr)
    else:
        _stream("> ")
        answer = assistant.follow_up(line, options, _stream)
        print()
        print(
            f"({answer.ttft_s * 1000:.0f} ms to first token, "
            f"{answer.decode_tokens_per_s:.1f} tokens/s)",
            file=sys.stderr,
        )
