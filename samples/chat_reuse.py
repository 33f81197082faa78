"""A multi-turn chat about one video that shows what each cache saves.

    python samples/chat_reuse.py                       # scripted turns, embedded model
    python samples/chat_reuse.py --package PKG --video clip.mp4 --interactive

Printed per turn: the time to first token and how many tokens were
prefilled. The first question pays for decoding, encoding and prefilling the
video; a new question forks from the cached video prefix (only the question
is prefilled); a follow-up continues the conversation (only the new turn is
prefilled). ``/new`` in interactive mode starts a fresh question, ``/quit`` ends.
The embedded model was trained on single questions, so its follow-up answers
may be off; the timings are the point here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions
from crosslmm_edge.runtime.errors import UserError

SCRIPT = [  # (kind, question): "ask" forks from the video prefix, "follow" continues
    ("ask", "what colour is the object?"),
    ("follow", "what shape is it?"),
    ("follow", "which way does it move?"),
    ("ask", "what colour is the small dot?"),
]


def turn(assistant: RuntimeAssistant, kind: str, question: str, options: GenerationOptions) -> None:
    """Run one turn and print its answer and timings."""
    before = assistant.cache.length if kind == "follow" else assistant.prefix_length
    print(f"[{kind}] {question}\n   ", end="", flush=True)
    run = assistant.follow_up if kind == "follow" else assistant.ask
    answer = run(question, options, lambda text: print(text, end="", flush=True))
    prefilled = assistant.last_prompt_tokens
    print(
        f"\n   TTFT {answer.ttft_s * 1000:7.1f} ms | prefilled {prefilled:3d} new tokens "
        f"on top of {before} cached | video prefix reused: {answer.video_prefix_reused}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", help="model package (default: the embedded model)")
    parser.add_argument("--video", help="video file (default: a synthetic scene)")
    parser.add_argument("--interactive", action="store_true", help="read turns from stdin")
    parser.add_argument("--provider", default=None)
    args = parser.parse_args()
    if args.package is None:
        from crosslmm_edge.demo import embedded_package

        args.package = embedded_package()
    assistant = RuntimeAssistant(args.package, provider=args.provider)
    options = GenerationOptions(max_new_tokens=24)
    with tempfile.TemporaryDirectory() as temp:
        if args.video is None:
            from crosslmm_edge.calibration.world.evaluate import write_scene_video

            args.video = str(Path(temp) / "scene.mp4")
            write_scene_video(Path(args.video), 11, 0, 8)
        started = time.perf_counter()
        assistant.set_video(args.video)
        print(
            f"video prepared (decode + encode + prefix prefill) in "
            f"{(time.perf_counter() - started) * 1000:.1f} ms; the first TTFT includes it"
        )
        turns = _interactive() if args.interactive else SCRIPT
        for kind, question in turns:
            turn(assistant, kind, question, options)
    return 0


def _interactive():
    """Turns typed by the user: a follow-up by default, ``/new Q`` for a fresh question."""
    for line in sys.stdin:
        line = line.strip()
        if line == "/quit":
            return
        if line.startswith("/new "):
            yield "ask", line[5:]
        elif line:
            yield "follow", line


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
