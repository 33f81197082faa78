"""``crosslmm-edge serve`` through the official ``openai`` client and raw HTTP.

One server (the embedded model's package, a media folder of synthetic scenes,
a looping live file) serves the whole module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from crosslmm_edge.calibration.world.synthetic_world import normalise_answer
from crosslmm_edge.cli import main
from crosslmm_edge.demo import embedded_package
from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.inference.sampling import GenerationOptions
from crosslmm_edge.runtime.serve.api_error import ApiError
from crosslmm_edge.runtime.serve.engine import Engine, Job
from crosslmm_edge.runtime.serve.settings import ServeSettings
from crosslmm_edge.runtime.serve.state_cache import CacheKey, StateCache
from crosslmm_edge.runtime.serve.turn_watch import TurnWatch
from crosslmm_edge.runtime.video.video_state import StateKey, VideoState
from tests.serve_helpers import MODEL, running_server, scene_videos, video_message


@pytest.fixture(scope="module")
def package() -> Path:
    return embedded_package(log=lambda message: None)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list]]:
    folder = tmp_path_factory.mktemp("media")
    return folder, scene_videos(folder, (1, 2, 3))


@pytest.fixture(scope="module")
def server(package: Path, media) -> str:
    folder, _ = media
    settings = ServeSettings(
        model_name=MODEL,
        media_dir=folder,
        live_source=str(folder / "scene-3.mp4"),
        live_loop=True,
        live_window_s=2.0,
        live_sample_fps=4.0,
    )
    with running_server(package, settings) as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def _ask_cli(package: Path, video: Path, question: str, capsys, *extra: str) -> dict:
    argv = ["ask", str(package), "--video", str(video), "--question", question, "--json"]
    assert main([*argv, "--max-new-tokens", "8", *extra]) == 0
    return json.loads(capsys.readouterr().out)["answers"][0]


def test_openai_client_gets_the_tokens_ask_prints(client, package, media, capsys) -> None:
    folder, _ = media
    question = "what kind of shape is it?"
    expected = _ask_cli(package, folder / "scene-1.mp4", question, capsys, "--logprobs")
    messages = [video_message("scene-1.mp4", question)]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0, logprobs=True
    )
    extra = reply.model_extra["x_crosslmm"]
    assert reply.choices[0].message.content == expected["answer"]
    assert extra["token_ids"] == expected["token_ids"]
    served = [entry.logprob for entry in reply.choices[0].logprobs.content]
    assert served == pytest.approx(expected["logprobs"], abs=1e-5)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == expected["answer"]


def test_embedded_model_answers_the_synthetic_questions(client, media) -> None:
    _, scenes = media
    wrong = []
    for name, qas in scenes.items():
        for qa in qas:
            reply = client.chat.completions.create(
                model=MODEL, messages=[video_message(name, qa.question)], max_tokens=8
            )
            answer = normalise_answer(reply.choices[0].message.content)
            if answer != qa.answer:
                wrong.append((name, qa.question, answer, qa.answer))
    assert not wrong


def test_second_request_reuses_the_video_from_any_client(server, media) -> None:
    body = {"messages": [video_message("scene-2.mp4", "which shape is moving?")], "max_tokens": 4}
    first = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
    with httpx.Client(base_url=server, timeout=30) as other:  # a new connection
        second = other.post("/v1/chat/completions", json=body)
    assert first.status_code == second.status_code == 200
    assert second.headers["X-Video-Reused"] == "true"
    usage = second.json()["usage"]
    assert usage["video_reused"] is True and usage["prompt_tokens_details"]["cached_tokens"] > 0
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]


@pytest.fixture(scope="module")
def forgetful_server(package: Path, media) -> str:
    """A server whose conversation cache holds none: earlier turns are replayed as text."""
    settings = ServeSettings(model_name=MODEL, media_dir=media[0], state_cache_bytes=1 << 20)
    with running_server(package, settings) as url:
        yield url


@pytest.mark.parametrize("kept", [True, False], ids=["kv-kept", "replayed"])
def test_multi_turn_matches_the_runtime_conversation(
    kept, server, forgetful_server, package, media
) -> None:
    folder, _ = media
    url = server if kept else forgetful_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    questions = ["what kind of shape is it?", "what colour is the small dot?", "which way?"]
    runtime = RuntimeAssistant(package)
    runtime.set_video(str(folder / "scene-1.mp4"))
    options = GenerationOptions(max_new_tokens=6)
    expected = [runtime.ask(questions[0], options).token_ids]
    expected += [runtime.follow_up(q, options).token_ids for q in questions[1:]]
    messages: list[dict] = []
    for number, question in enumerate(questions):
        # Another client's video in between: the conversation leaves the KV cache.
        client.chat.completions.create(
            model=MODEL, messages=[video_message("scene-2.mp4", "hi")], max_tokens=1
        )
        turn = video_message("scene-1.mp4", question) if number == 0 else question
        messages.append(turn if number == 0 else {"role": "user", "content": turn})
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
        assert reply.model_extra["x_crosslmm"]["token_ids"] == expected[number], number
        cached = reply.usage.prompt_tokens_details.cached_tokens
        if number:  # earlier turns come from a kept KV cache, or are prefilled again
            assert (cached > runtime.prefix_length) == kept
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})


def test_upload_and_inline_data_share_the_content_id(server, media) -> None:
    folder, scenes = media
    data = (folder / "scene-2.mp4").read_bytes()
    upload = httpx.post(f"{server}/v1/videos", content=data, timeout=30)
    assert upload.status_code == 201
    video_id = upload.json()["id"]
    assert video_id == f"video-{hashlib.sha256(data).hexdigest()}"
    question = scenes["scene-2.mp4"][0].question
    inline = "data:video/mp4;base64," + base64.b64encode(data).decode()
    answers = set()
    for url in (video_id, inline):
        body = {"messages": [video_message(url, question)], "max_tokens": 4}
        reply = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200 and reply.headers["X-Video-Id"] == video_id
        answers.add(reply.json()["choices"][0]["message"]["content"])
    assert len(answers) == 1
    listed = httpx.get(f"{server}/v1/videos").json()
    assert video_id in [entry["id"] for entry in listed["data"]]
    assert listed["live"] is True and "scene-1.mp4" in listed["media"]
    assert httpx.delete(f"{server}/v1/videos/{video_id}").json()["deleted"] is True
    assert httpx.delete(f"{server}/v1/videos/{video_id}").status_code == 404
    body = {"messages": [video_message(video_id, question)], "max_tokens": 4}
    assert httpx.post(f"{server}/v1/chat/completions", json=body).status_code == 404


def test_stop_strings_seed_and_usage(client) -> None:
    messages = [video_message("scene-1.mp4", "what kind of shape is it?")]
    free = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
    text = free.choices[0].message.content
    cut = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=3, stop=text[1:3]
    )
    assert cut.choices[0].message.content == text[:1] and cut.choices[0].finish_reason == "stop"
    sampled = [
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=5, temperature=1.5, seed=11
        ).model_extra["x_crosslmm"]["token_ids"]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    assert free.usage.completion_tokens == len(free.model_extra["x_crosslmm"]["token_ids"])
    assert free.usage.total_tokens == free.usage.prompt_tokens + free.usage.completion_tokens


def test_live_source_answers_about_its_window(client, server, media) -> None:
    _, scenes = media
    qa = scenes["scene-3.mp4"][1]  # the shape: visible in every window of the looping scene
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/health").json()["live"]["frames_decoded"] < 8:
        assert time.monotonic() < deadline, "the live source delivered no frames"
        time.sleep(0.1)
    reply = client.chat.completions.create(
        model=MODEL, messages=[video_message("live", qa.question)], max_tokens=4
    )
    assert normalise_answer(reply.choices[0].message.content) == qa.answer
    assert reply.model_extra["x_crosslmm"]["video_id"] == "live"


def test_stream_opens_with_the_first_token_before_any_text(server) -> None:
    messages = [video_message("scene-1.mp4", "which shape is moving?")]
    body = {"messages": messages, "stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=30) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line[:7] == "data: {"]
    first, last = events[0], [e for e in events if "x_crosslmm" in e][-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["x_crosslmm"]["first_token_id"] == last["x_crosslmm"]["token_ids"][0]


def test_models_and_health(client, server) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["state_cache"]["entries"] >= 1


# -- units ----------------------------------------------------------------


def _state(nbytes: int) -> VideoState:
    return VideoState(None, 1, np.zeros(nbytes, dtype=np.uint8), {})


def _key(name: str) -> CacheKey:
    return CacheKey(StateKey(name, 8, 32, "onnx/fp32", "x"), None)


def test_state_cache_evicts_least_recently_used_within_its_bytes() -> None:
    cache = StateCache(max_bytes=250)
    for name in "abc":
        cache.put(_key(name), _state(100), 100)
    assert cache.get(_key("a")) is None and cache.bytes == 200  # a went first
    assert cache.get(_key("b")) is not None  # b is now the most recent
    cache.put(_key("d"), _state(100), 100)
    assert cache.get(_key("c")) is None and cache.get(_key("b")) is not None
    cache.put(_key("huge"), _state(1000), 1000)  # larger than the bound: not kept
    assert cache.get(_key("huge")) is None and cache.bytes <= 250


def test_turn_watch_never_shows_part_of_a_stop_string() -> None:
    shown: list[str] = []
    watch = TurnWatch(shown.append, stop=["END"])
    for delta in ("ab", "cE", "N", "x", "yEN", "Dz"):
        watch.on_text(delta)
    watch.finish()
    assert "".join(shown) == "abcENxy" == watch.answer and watch.cut is not None


def test_turn_watch_announces_the_first_token_even_without_text() -> None:
    seen: list[tuple[str, object]] = []
    watch = TurnWatch(lambda text: seen.append(("text", text)))
    watch.first_token = lambda token: seen.append(("token", token))
    for token, _ in watch.watched(iter([(7, 0.0), (8, 0.0)])):
        seen.append(("step", token))
        watch.on_text("" if token == 7 else "x")  # token 7 decodes to no text yet
    assert seen == [("token", 7), ("step", 7), ("step", 8), ("text", "x")]


def test_turn_watch_stops_generation_once_cancelled() -> None:
    watch = TurnWatch(lambda text: None)
    steps = ((token, 0.0) for token in range(100))
    taken = []
    for token, _ in watch.watched(steps):
        taken.append(token)
        if token == 2:
            watch.cancelled.set()  # what the app does when the client goes away
    assert taken == [0, 1, 2] and watch.stopped_early


def test_full_queue_is_a_503_with_retry_after() -> None:
    engine = Engine(object(), ServeSettings(queue_size=1))  # type: ignore[arg-type]
    job = Job(None, None, lambda event: None)  # type: ignore[arg-type]
    engine.submit(job)
    with pytest.raises(ApiError) as refused:
        engine.submit(job)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"


def test_public_bind_needs_an_api_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--api-key"):
        ServeSettings(host="0.0.0.0").check()
    ServeSettings(host="0.0.0.0", api_key="k").check()
    ServeSettings(host="::1").check()


def _cli_in_subprocess(prelude: str, argv: list[str]) -> subprocess.CompletedProcess:
    script = (
        f"import sys\n{prelude}\nfrom crosslmm_edge.cli import main\nsys.exit(main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_serve_without_the_extra_names_it(tmp_path: Path) -> None:
    done = _cli_in_subprocess("sys.modules['starlette'] = None", ["serve", str(tmp_path)])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: `serve` needs the HTTP stack (module 'starlette' is missing): "
        "pip install 'crosslmm-edge[serve]'"
    ]


def test_serve_needs_a_package_and_no_torch(tmp_path: Path) -> None:
    done = _cli_in_subprocess("sys.modules['torch'] = None", ["serve", str(tmp_path)])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a model package" in lines[0], done.stderr


def test_a_failed_turn_does_not_corrupt_the_kept_conversation(
    forgetful_server, package, media
) -> None:
    """A refused replay truncates the KV cache: the next turn must not trust it."""
    folder, _ = media
    first, second = "what kind of shape is it?", "what colour is the small dot?"
    runtime = RuntimeAssistant(package)
    runtime.set_video(str(folder / "scene-1.mp4"))
    options = GenerationOptions(max_new_tokens=6)
    answer = runtime.ask(first, options).answer
    context = runtime.cache.length
    expected = runtime.follow_up(second, options).token_ids
    expected_prompt = context + runtime.last_prompt_tokens  # the whole conversation
    opening = video_message("scene-1.mp4", first)
    url = f"{forgetful_server}/v1/chat/completions"  # no live source switching videos
    assert httpx.post(url, json={"messages": [opening], "max_tokens": 6}, timeout=30).is_success
    wrong = [opening, {"role": "assistant", "content": "red"}, {"role": "user", "content": second}]
    refused = httpx.post(url, json={"messages": wrong, "max_tokens": 4000}, timeout=30)
    assert refused.status_code == 400 and "context" in refused.json()["error"]["message"]
    right = [opening, {"role": "assistant", "content": answer}, {"role": "user", "content": second}]
    reply = httpx.post(url, json={"messages": right, "max_tokens": 6}, timeout=30).json()
    assert reply["x_crosslmm"]["token_ids"] == expected
    assert reply["usage"]["prompt_tokens"] == expected_prompt
