"""Where the serve worker's time to first token goes: the LLM runs of each question.

    python3 -m crosslmm_edge.benchmarks.serve_runs PKG [--frames 32] [--precision int4]
        [--threads 1]

Runs the server's worker in-process (no HTTP, no live source) and asks two
questions about one synthetic video, as ``serve_load``'s reuse measure does.
For each question it prints the worker's time to first token, the time spent
preparing the video (installed from the cache, or decoded, encoded and its
prefix prefilled), every LLM graph run before the first token (the positions
it ran and its milliseconds), and the median decode step after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..runtime.backends.base import DeviceArray, GraphSession
from ..runtime.model.contract import LLM
from ..runtime.serve.engine import Engine, Event, Job, TurnResult
from ..runtime.serve.media import MediaStore
from ..runtime.serve.schemas import parse_chat_request
from ..runtime.serve.served_assistant import ServedAssistant
from ..runtime.serve.settings import ServeSettings
from .serve_load import body

QUESTIONS = ("what kind of shape is it?", "what colour is the small dot?")


class TimedSession(GraphSession):
    """An LLM session that logs (positions, start, end) of every run."""

    def __init__(self, inner: GraphSession) -> None:
        self.inner, self.name = inner, inner.name
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.runs: list[tuple[int, float, float]] = []

    def run(
        self,
        feeds: Mapping[str, np.ndarray | DeviceArray],
        write_to: Mapping[str, DeviceArray] | None = None,
        fetch: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self.inner.run(feeds, write_to, fetch)
        self.runs.append((feeds["position_ids"].shape[1], start, time.perf_counter()))
        return outputs


def ask(engine: Engine, media: MediaStore, settings: ServeSettings, question: str) -> dict:
    """One streamed question through the worker; its events with their times."""
    chat = parse_chat_request(body("video.mp4", question), settings)
    events: list[tuple[float, Event]] = []
    done = threading.Event()

    def send(event: Event) -> None:
        events.append((time.perf_counter(), event))
        if event[0] in ("done", "error"):
            done.set()

    video = media.resolve(chat.video_url)
    assert video is not None  # a file of the media folder
    engine.submit(Job(chat, video, send))
    done.wait(600)
    times = {kind: at for at, (kind, _) in reversed(events)}
    result = events[-1][1][1]
    assert isinstance(result, TurnResult), result
    return {"times": times, "result": result}


def report(session: TimedSession, answer: dict) -> dict:
    """The question's first-token time, video time and LLM runs before the first token."""
    times, result = answer["times"], answer["result"]
    taken = times["token"] - result.ttft_s  # when the worker took the request
    before = [(n, (e - s) * 1000) for n, s, e in session.runs if e <= times["token"]]
    after = [(e - s) * 1000 for n, s, e in session.runs if s >= times["token"]]
    return {
        "worker_ttft_ms": result.ttft_s * 1000,
        "video_ms": (times["start"] - taken) * 1000,  # installed, or decoded and encoded
        "llm_runs_before_first_token": [f"{n} positions: {ms:.1f} ms" for n, ms in before],
        "decode_step_ms_median": statistics.median(after) if after else None,
        "video_reused": result.video_reused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--precision", help="which artifacts run (default: the best)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from ..calibration.world.evaluate import write_scene_video

    with tempfile.TemporaryDirectory() as temp:
        write_scene_video(Path(temp) / "video.mp4", 100, 0, args.frames)
        settings = ServeSettings(media_dir=Path(temp), default_frames=args.frames, max_new_tokens=8)
        settings.check()
        assistant = ServedAssistant(args.package, precision=args.precision, threads=args.threads)
        settings.max_frames = assistant.pipeline.package.max_frames
        session = TimedSession(assistant.pipeline.sessions[LLM])
        assistant.pipeline.sessions[LLM] = session
        engine, media = Engine(assistant, settings), MediaStore(settings, has_live=False)
        engine.start()
        try:
            for label, question in zip(("first", "second"), QUESTIONS, strict=True):
                session.runs.clear()
                answer = ask(engine, media, settings, question)
                print(json.dumps({label: report(session, answer)}, indent=1), flush=True)
        finally:
            engine.stop()
            media.close()


if __name__ == "__main__":
    main()
