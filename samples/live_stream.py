"""Answer questions about "the last N seconds" of a live source.

    python samples/live_stream.py                          # simulated camera, embedded model
    python samples/live_stream.py --camera 0 --seconds 4   # a webcam (needs opencv-python)
    python samples/live_stream.py --file grow.ts --follow  # a file still being written

The runtime keeps a rolling window of frames: each kept frame is encoded once
when it arrives and appended to the video state (with ``v2v_scope="frame"``
without recomputing the earlier frames); frames older than the window are
dropped. Every ``--ask-every`` seconds of stream time the questions are asked
about the window.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import numpy as np

from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions
from crosslmm_edge.runtime.chat.live import RollingWindow
from crosslmm_edge.runtime.errors import UserError

Frames = Iterator[np.ndarray]  # uint8 RGB [H, W, 3]


def camera_frames(index: int) -> tuple[float, Frames]:
    """Frames of an OpenCV camera and its frame rate."""
    try:
        import cv2
    except ImportError:
        raise UserError("--camera needs OpenCV: pip install opencv-python") from None
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise UserError(f"cannot open camera {index}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0

    def frames() -> Frames:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return fps, frames()


def file_frames(path: str, follow: bool, poll_s: float = 0.5) -> tuple[float, Frames]:
    """Frames of a video file; with ``follow``, keep reading as the file grows.

    A growing file is read again from the start at each poll, skipping the
    frames already delivered (streamable formats such as MPEG-TS or MKV).
    """
    import av

    try:
        with av.open(path) as container:
            rate = container.streams.video[0].average_rate
    except (av.error.FFmpegError, OSError, IndexError) as exc:
        raise UserError(f"cannot read video {path}: {exc}") from None
    fps = float(rate) if rate else 25.0

    def frames() -> Frames:
        delivered = 0
        while True:
            with av.open(path) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    if index >= delivered:
                        delivered += 1
                        yield frame.to_ndarray(format="rgb24")
            if not follow:
                return
            time.sleep(poll_s)

    return fps, frames()


def simulated_frames(scenes: int = 3, frames_per_scene: int = 16) -> tuple[float, Frames]:
    """A synthetic "camera": scenes of the synthetic world, one after the other, at 8 fps."""
    from crosslmm_edge.calibration import synthetic_world as world

    def frames() -> Frames:
        for index in range(scenes):
            scene = world.make_scene(seed=21, index=index)
            print(f"(scene {index}: {world.answers(scene)})")
            yield from world.render(scene, frames_per_scene)

    return 8.0, frames()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, help="OpenCV camera index")
    source.add_argument("--file", help="video file (a growing one with --follow)")
    parser.add_argument("--follow", action="store_true", help="keep reading a growing file")
    parser.add_argument("--package", help="model package (default: the embedded model)")
    parser.add_argument("--seconds", type=float, default=2.0, help="window length (default 2)")
    parser.add_argument("--sample-fps", type=float, default=4.0, help="frames kept per second")
    parser.add_argument("--ask-every", type=float, default=2.0, help="seconds of stream time")
    parser.add_argument("--question", action="append", help="repeatable")
    parser.add_argument("--provider", default=None)
    args = parser.parse_args()
    if args.package is None:
        from crosslmm_edge.demo import embedded_package

        args.package = embedded_package()
    if args.camera is not None:
        fps, frames = camera_frames(args.camera)
    elif args.file:
        fps, frames = file_frames(args.file, args.follow)
    else:
        fps, frames = simulated_frames()
    assistant = RuntimeAssistant(args.package, provider=args.provider)
    window = RollingWindow(assistant, args.seconds, fps, args.sample_fps)
    questions = args.question or ["what colour is the object?", "which way does it move?"]
    options = GenerationOptions(max_new_tokens=16)
    ask_every = max(1, round(args.ask_every * fps))
    for count, rgb in enumerate(frames, start=1):
        window.push(rgb)
        if count % ask_every:
            continue
        window.flush()
        print(
            f"t={count / fps:6.2f} s, window of {window.frames_in_window} frames "
            f"(last {args.seconds} s):"
        )
        for question in questions:
            answer = assistant.ask(question, options)
            print(f"   {question} -> {answer.answer!r} ({answer.ttft_s * 1000:.1f} ms TTFT)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
