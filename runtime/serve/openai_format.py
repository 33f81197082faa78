"""Turn results into OpenAI's ``chat.completion`` objects and stream chunks.

Besides OpenAI's fields, ``usage.video_reused`` says whether the video's
encoded state came from the cache, ``usage.prompt_tokens_details.cached_tokens``
counts the positions not prefilled again, and ``x_crosslmm`` carries the
server-side timings and the generated token ids.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from .engine import TurnResult


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(result: TurnResult) -> dict:
    """OpenAI's ``usage`` block, with whether the video was reused."""
    completion = len(result.token_ids)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
        "video_reused": result.video_reused,
    }


def logprobs_block(result: TurnResult, decode: Callable[[list[int]], str]) -> dict | None:
    """``{"content": [{token, logprob, bytes, top_logprobs}]}`` or None when not asked."""
    if result.logprobs is None:
        return None
    content = []
    for token, logprob in zip(result.token_ids, result.logprobs, strict=True):
        text = decode([token])
        content.append(
            {
                "token": text,
                "logprob": logprob,
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [],
            }
        )
    return {"content": content}


def extras(result: TurnResult, video_id: str) -> dict:
    """The ``x_crosslmm`` block: timings measured in the server, token ids, the video."""
    return {
        "video_id": video_id,
        "video_reused": result.video_reused,
        "ttft_s": result.ttft_s,
        "queue_s": result.queue_s,
        "token_ids": result.token_ids,
    }


def completion(
    cid: str, model: str, result: TurnResult, video_id: str, logprobs: dict | None
) -> dict:
    """The whole ``chat.completion`` object of a non-streamed answer."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": logprobs,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result),
        "x_crosslmm": extras(result, video_id),
    }


def chunk(
    cid: str,
    model: str,
    delta: dict,
    finish_reason: str | None = None,
    logprobs: dict | None = None,
) -> dict:
    """One ``chat.completion.chunk`` with one choice."""
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
        "usage": None,
    }


def first_chunk(cid: str, model: str, token: int | None) -> dict:
    """The stream's first chunk, sent when the first token is sampled: OpenAI's role
    delta with empty content, and the token's id in ``x_crosslmm.first_token_id``."""
    first = chunk(cid, model, {"role": "assistant", "content": ""})
    if token is not None:
        first["x_crosslmm"] = {"first_token_id": token}
    return first


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
