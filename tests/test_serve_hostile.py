"""Hostile requests to ``serve``: each gets its 4xx (or a clean end) and the next good one works.

The server binds loopback with an API key, small bounds, and a media folder
next to a secret file it must never read.
"""

from __future__ import annotations

import base64
import json
import socket

import httpx
import pytest

from crosslmm_edge.demo import embedded_package
from crosslmm_edge.runtime.serve.settings import ServeSettings
from tests.serve_helpers import MODEL, running_server, scene_videos, video_message

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {"messages": [video_message("scene-1.mp4", "what kind of shape is it?")], "max_tokens": 4}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("hostile")
    media = root / "media"
    scenes = scene_videos(media, (1,))
    (root / "secret.mp4").write_bytes((media / "scene-1.mp4").read_bytes())
    (media / "link.mp4").symlink_to(root / "secret.mp4")
    (media / "notes.txt").write_text("not a video\n" * 10)
    settings = ServeSettings(
        model_name=MODEL,
        api_key=KEY,
        media_dir=media,
        max_body_bytes=200_000,
        max_video_bytes=100_000,
        max_frames=16,
    )
    assert scenes
    with running_server(embedded_package(log=lambda message: None), settings) as url:
        yield url


@pytest.fixture(scope="module")
def expected(served) -> str:
    url = served
    reply = httpx.post(f"{url}/v1/chat/completions", json=GOOD, headers=AUTH, timeout=30)
    assert reply.status_code == 200
    return reply.json()["choices"][0]["message"]["content"]


def _post(url: str, body: object = None, raw: bytes | None = None, headers=AUTH) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=30)


def _still_serves(url: str, expected: str) -> None:
    reply = _post(url, GOOD)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == expected


def _with_video(url: str) -> dict:
    return {"messages": [video_message(url, "what kind of shape is it?")], "max_tokens": 4}


def _too_big_inline() -> dict:
    return _with_video("data:video/mp4;base64," + base64.b64encode(b"\0" * 120_000).decode())


CASES = {
    "malformed JSON": (dict(raw=b'{"messages": ['), 400),
    "not UTF-8": (dict(raw=b"\xff\xfe{}"), 400),
    "deeply nested JSON": (dict(raw=b"[" * 50_000 + b"]" * 50_000), 400),
    "body is a list": (dict(body=[1, 2]), 400),
    "messages wrong type": (dict(body={"messages": "hi"}), 400),
    "content wrong type": (dict(body={"messages": [{"role": "user", "content": 5}]}), 400),
    "unknown role": (dict(body={"messages": [{"role": "tool", "content": "x"}]}), 400),
    "no video": (dict(body={"messages": [{"role": "user", "content": "hi"}]}), 400),
    "max_tokens a string": (dict(body={**GOOD, "max_tokens": "8"}), 400),
    "max_tokens a bool": (dict(body={**GOOD, "max_tokens": True}), 400),
    "temperature NaN": (dict(raw=json.dumps(GOOD)[:-1].encode() + b', "temperature": NaN}'), 400),
    "n = 2": (dict(body={**GOOD, "n": 2}), 400),
    "unknown model": (dict(body={**GOOD, "model": "gpt-4o"}), 404),
    "frames over the bound": (dict(body={**GOOD, "frames": 17}), 400),
    "huge body": (dict(raw=b" " * 300_000), 413),
    "remote URL": (dict(body=_with_video("https://example.com/v.mp4")), 400),
    "rtsp URL": (dict(body=_with_video("rtsp://camera/stream")), 400),
    "path traversal": (dict(body=_with_video("../secret.mp4")), 400),
    "absolute path": (dict(body=_with_video("/etc/passwd")), 400),
    "file:// traversal": (dict(body=_with_video("file://../secret.mp4")), 400),
    "symlink out of media": (dict(body=_with_video("link.mp4")), 400),
    "missing file": (dict(body=_with_video("nope.mp4")), 400),
    "text file as video": (dict(body=_with_video("notes.txt")), 400),
    "undecodable inline video": (
        dict(body=_with_video("data:video/mp4;base64," + base64.b64encode(b"x" * 999).decode())),
        400,
    ),
    "bad base64": (dict(body=_with_video("data:video/mp4;base64,@@@")), 400),
    "oversized inline video": (dict(body=_too_big_inline()), 413),
    "unknown upload id": (dict(body=_with_video("video-" + "0" * 64)), 404),
    "live without --live": (dict(body=_with_video("live")), 400),
    "missing API key": (dict(body=GOOD, headers={}), 401),
    "wrong API key": (dict(body=GOOD, headers={"Authorization": "Bearer nope"}), 401),
    "context overflow": (dict(body={**GOOD, "max_tokens": 4000}), 400),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request_gets_its_error_and_the_server_goes_on(served, expected, case) -> None:
    url = served
    kwargs, status = CASES[case]
    reply = _post(url, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"]
    _still_serves(url, expected)


def test_oversized_and_undecodable_uploads(served, expected) -> None:
    url = served
    for data, status in ((b"\0" * 100_001, 413), (b"not a video", 400), (b"", 400)):
        reply = httpx.post(f"{url}/v1/videos", content=data, headers=AUTH, timeout=30)
        assert reply.status_code == status
    assert httpx.post(f"{url}/v1/videos", content=b"x", timeout=30).status_code == 401
    _still_serves(url, expected)


def test_unknown_route_and_method(served, expected) -> None:
    url = served
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    assert httpx.get(f"{url}/v1/chat/completions", headers=AUTH).status_code == 405
    _still_serves(url, expected)


def test_client_that_disconnects_mid_stream(served, expected) -> None:
    url = served
    body = json.dumps({**GOOD, "stream": True, "max_tokens": 200}).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 200")  # the stream began: hang up
    _still_serves(url, expected)


def test_garbage_http_is_refused(served, expected) -> None:
    url = served
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = sock.recv(64)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400")  # refused or closed
    _still_serves(url, expected)


def test_health_and_page_need_no_key(served) -> None:
    url = served
    assert httpx.get(f"{url}/health").status_code == 200
    assert "<html" in httpx.get(f"{url}/").text
    assert httpx.get(f"{url}/v1/models").status_code == 401
