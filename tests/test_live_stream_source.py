"""The live source reads a network stream, not only a file: an HTTP server on loopback."""

from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.serve.live_source import LiveFeed
from tests.serve_helpers import scene_videos


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def http_url(tmp_path: Path):
    scene_videos(tmp_path, (1,))
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_frames_arrive_from_an_http_stream(http_url: str) -> None:
    feed = LiveFeed(f"{http_url}/scene-1.mp4", sample_fps=4.0, window_s=2.0, loop=False)
    assert not feed.is_file  # read as a stream: reopened when it ends, never followed as a file
    feed.start()
    try:
        deadline = time.monotonic() + 30
        while feed.decoded < 8:
            assert time.monotonic() < deadline, f"no frames from the stream ({feed.error})"
            time.sleep(0.05)
        frames = feed.drain()
    finally:
        feed.stop()
    assert frames
    assert all(f.ndim == 3 and f.shape[2] == 3 and f.dtype.name == "uint8" for f in frames)


def test_a_stream_that_does_not_exist_is_one_error(http_url: str) -> None:
    with pytest.raises(UserError, match="cannot open it as video"):
        LiveFeed(f"{http_url}/missing.mp4", sample_fps=4.0, window_s=2.0, loop=False)
