"""Ask questions about a video file with the torch-free runtime.

    python samples/ask_video.py                         # embedded model, synthetic video
    python samples/ask_video.py --package PKG --video clip.mp4 --question "What happens?"

Without ``--package`` the embedded model is exported once to
~/.cache/crosslmm-edge (needs the export extra); without ``--video`` a
synthetic scene is generated and its true answers are shown. The video is
encoded once; every question forks from the cached video prefix.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions
from crosslmm_edge.runtime.errors import UserError


def synthetic_video(folder: Path, seed: int) -> tuple[Path, list[tuple[str, str]]]:
    """A synthetic scene video and its (question, true answer) pairs."""
    from crosslmm_edge.calibration.world.evaluate import write_scene_video

    video = folder / f"scene-{seed}.mp4"
    return video, [(qa.question, qa.answer) for qa in write_scene_video(video, seed, 0, 8)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", help="model package (default: the embedded model)")
    parser.add_argument("--video", help="video file (default: a synthetic scene)")
    parser.add_argument("--question", action="append", help="repeatable")
    parser.add_argument("--seed", type=int, default=3, help="synthetic scene seed")
    parser.add_argument("--provider", default=None, help="cpu, cuda or tensorrt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    if args.package is None:
        from crosslmm_edge.demo import embedded_package

        args.package = embedded_package()
    assistant = RuntimeAssistant(args.package, provider=args.provider)
    with tempfile.TemporaryDirectory() as temp:
        truth: dict[str, str] = {}
        if args.video is None:
            video, pairs = synthetic_video(Path(temp), args.seed)
            args.video, truth = str(video), dict(pairs)
        questions = args.question or list(truth) or ["What happens in this video?"]
        assistant.set_video(args.video)
        options = GenerationOptions(max_new_tokens=args.max_new_tokens)
        for question in questions:
            print(f"Q: {question}\nA: ", end="", flush=True)
            answer = assistant.ask(question, options, lambda text: print(text, end="", flush=True))
            known = f"   (truth: {truth[question]})" if question in truth else ""
            print(
                f"{known}\n   {answer.ttft_s * 1000:.1f} ms to first token, "
                f"{answer.decode_tokens_per_s:.0f} tokens/s, "
                f"video prefix reused: {answer.video_prefix_reused}"
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
