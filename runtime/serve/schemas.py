"""Validate an OpenAI chat-completions body into a ``ChatRequest``.

Only what this model can do is accepted: one video (a ``video_url`` part of
the first user message), text parts, alternating user/assistant turns that
end with a user question, n = 1. Every other shape gets a 400 that names the
field. Fields the API defines but that change nothing here (``user``,
``metadata``...) are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..inference.sampling import GenerationOptions
from ..model.limits import is_count
from .api_error import ApiError, bad_request
from .settings import ServeSettings

MAX_STOP_STRINGS = 4  # OpenAI's bound
MAX_TEXT_CHARS = 32_000  # one message; the context bounds the rest
ROLES = ("system", "developer", "user", "assistant")


@dataclass
class ChatRequest:
    """One validated chat request."""

    video_url: str
    question: str
    options: GenerationOptions
    history: list[tuple[str, str]] = field(default_factory=list)  # (question, answer) turns
    system: str | None = None
    stop: list[str] = field(default_factory=list)
    frames: int | None = None
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: object, settings: ServeSettings) -> ChatRequest:
    """The request in ``body`` (parsed JSON), or ``ApiError`` 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    model = body.get("model")
    if model is not None and model != settings.model_name:
        raise ApiError(
            404, f"the model {str(model)[:100]!r} does not exist", "model", "model_not_found"
        )
    system, turns, video_url = _parse_messages(body.get("messages"))
    if body.get("n", 1) != 1:
        raise bad_request("only n = 1 is supported", "n")
    stream = _optional_bool(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    return ChatRequest(
        video_url=video_url,
        question=turns[-1],
        history=list(zip(turns[:-1:2], turns[1:-1:2], strict=True)),
        options=_options(body, settings),
        system=system if system is not None else settings.system,
        stop=_stop_strings(body.get("stop")),
        frames=_frames(body.get("frames"), settings),
        stream=stream,
        include_usage=_optional_bool(stream_options, "include_usage", False),
    )


def _parse_messages(messages: object) -> tuple[str | None, list[str], str]:
    """(system text, user/assistant texts alternating from a user one, the video's url)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    system: str | None = None
    turns: list[str] = []
    videos: list[str] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad_request(f"{where} must be an object with a role in {ROLES}", where)
        role = message["role"]
        later: list[str] = []  # a video part in a later user message: refused below
        parts = (videos if not turns else later) if role == "user" else None
        text = _content_text(message.get("content"), where, parts)
        if later:
            raise bad_request(f"{where}: the video belongs in the first user message", where)
        if role in ("system", "developer"):
            if turns or system is not None:
                raise bad_request(f"{where}: one system message, before the others", where)
            system = text
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise bad_request(f"{where}: expected a {expected} message (turns alternate)", where)
        turns.append(text)
    if len(turns) % 2 == 0:
        raise bad_request("the last message must be the user's question", "messages")
    if len(videos) != 1:
        raise bad_request(
            "the first user message needs exactly one video_url part "
            "(data:video/...;base64, an id from POST /v1/videos, a file under --media-dir, "
            "or 'live')",
            "messages",
        )
    return system, turns, videos[0]


def _content_text(content: object, where: str, videos: list[str] | None) -> str:
    """The text of a message; ``video_url`` parts are collected into ``videos``."""
    if isinstance(content, str):
        return _bounded(content, where)
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of parts", where)
    texts = []
    for number, part in enumerate(content):
        here = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url" and videos is not None:
            videos.append(_video_url(part.get("video_url"), here))
        else:
            raise bad_request(
                f"{here}: expected {{'type': 'text', 'text': str}}"
                + (" or a video_url part" if videos is not None else ""),
                here,
            )
    return _bounded("\n".join(texts), where)


def _video_url(value: object, where: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}: video_url needs a non-empty 'url' string", where)
    return url


def _bounded(text: str, where: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise bad_request(f"{where}: {len(text)} characters, at most {MAX_TEXT_CHARS}", where)
    if "\0" in text:
        raise bad_request(f"{where}: holds a NUL character", where)
    return text


def _options(body: dict, settings: ServeSettings) -> GenerationOptions:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = settings.max_new_tokens
    if not is_count(max_tokens, 1, settings.max_tokens_limit):
        raise bad_request(
            f"max_tokens must be an integer in [1, {settings.max_tokens_limit}]", "max_tokens"
        )
    temperature = _number(body, "temperature", settings.temperature, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request("top_p must be in (0, 1]", "top_p")
    seed = body.get("seed")
    if seed is not None and not is_count(seed, 0, (1 << 63) - 1):
        raise bad_request("seed must be an integer >= 0", "seed")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs not in (None, 0):
        raise bad_request("top_logprobs is not supported (only the chosen token's)", "top_logprobs")
    return GenerationOptions(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        logprobs=_optional_bool(body, "logprobs", False),
    )


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise bad_request(f"{name} must be a number in [{low}, {high}]", name)
    return float(value)


def _optional_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false", name)
    return value


def _stop_strings(stop: object) -> list[str]:
    if stop is None:
        return []
    strings = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(strings, list)
        or len(strings) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in strings)
    ):
        raise bad_request(
            f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
            "stop",
        )
    return strings


def _frames(frames: object, settings: ServeSettings) -> int | None:
    if frames is None:
        return settings.default_frames
    high = settings.max_frames
    if not is_count(frames, 1, high):
        raise bad_request(f"frames must be an integer in [1, {high}]", "frames")
    return frames
