"""Turn a stream of generated tokens into an ``Answer``.

Shared by the PyTorch reference and the runtime so that both stream text,
time and trim answers identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .assistant_types import Answer, TokenCallback


@dataclass
class TokenStream:
    """Generated tokens, their log-probabilities and the clock.

    times[0] is when the prompt's prefill started, times[i] when token i-1
    was ready.
    """

    tokens: list[int]
    logprobs: list[float]
    times: list[float]


def collect_tokens(
    steps: Iterable[tuple[int, float]],
    decode: Callable[[list[int]], str],
    stop_ids: Sequence[int],
    on_text: TokenCallback | None = None,
) -> TokenStream:
    """Drain a lazy (token, logprob) generator, streaming new text to ``on_text``.

    Text is emitted only once it decodes cleanly, so a multi-byte character
    split over tokens is never shown half-way.
    """
    stream = TokenStream([], [], [time.perf_counter()])
    shown = ""
    for token, logprob in steps:
        stream.times.append(time.perf_counter())
        stream.tokens.append(token)
        stream.logprobs.append(logprob)
        if on_text is not None and token not in stop_ids:
            text = decode(stream.tokens)
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                on_text(text[len(shown) :])
                shown = text
    return stream


def build_answer(
    question: str,
    stream: TokenStream,
    decode: Callable[[list[int]], str],
    stop_ids: Sequence[int],
    prefix_reused: bool,
    with_logprobs: bool,
    setup_s: float = 0.0,
) -> Answer:
    """The ``Answer`` of a finished stream; a final stop token is left out.

    ``setup_s`` (preparing the video) is added to the time to first token of
    the first question about a video, since the user waited for it.
    """
    tokens, times = stream.tokens, stream.times
    keep = len(tokens) - int(bool(tokens) and tokens[-1] in stop_ids)
    decode_s = times[-1] - times[1] if len(times) > 2 else 0.0
    return Answer(
        question=question,
        answer=decode(tokens[:keep]),
        token_ids=tokens[:keep],
        ttft_s=times[1] - times[0] + setup_s if len(times) > 1 else 0.0,
        decode_tokens_per_s=(len(times) - 2) / decode_s if decode_s > 0 else 0.0,
        video_prefix_reused=prefix_reused,
        logprobs=stream.logprobs[:keep] if with_logprobs else None,
    )
