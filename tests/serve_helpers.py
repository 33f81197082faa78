"""Run ``crosslmm-edge serve`` in-process for tests: uvicorn on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from crosslmm_edge.calibration.world.evaluate import write_scene_video
from crosslmm_edge.runtime.serve.server import create_app
from crosslmm_edge.runtime.serve.settings import ServeSettings

MODEL = "tiny"


@contextmanager
def running_server(package: Path, settings: ServeSettings) -> Iterator[str]:
    """Serve ``package`` on 127.0.0.1 (a free port) until the block ends; yields the base URL."""
    app = create_app(package, settings)
    config = uvicorn.Config(app.starlette(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def scene_videos(folder: Path, seeds: tuple[int, ...], frames: int = 8) -> dict[str, list]:
    """Synthetic scenes ``scene-S.mp4`` in ``folder``: file name -> its questions and answers."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        f"scene-{seed}.mp4": write_scene_video(folder / f"scene-{seed}.mp4", seed, 0, frames)
        for seed in seeds
    }


def video_message(url: str, question: str) -> dict:
    """A user message with one video_url part and the question."""
    return {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": url}},
            {"type": "text", "text": question},
        ],
    }
