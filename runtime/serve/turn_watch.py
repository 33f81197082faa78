"""Watch one served turn token by token: stream text, honour stop strings, stop when told.

The first token is announced as soon as it is sampled (``first_token``), even
when it decodes to no text yet, so a client's time to first token is the
model's. Text is held back while its end could still be the start of a stop string,
so a client never sees part of a stop string; the cut text is what the turn
answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

FirstToken = Callable[[int], None]  # receives the first sampled token id


@dataclass
class TurnWatch:
    """The streaming side of one turn; ``emit`` receives text deltas."""

    emit: Callable[[str], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    stop: list[str] = field(default_factory=list)
    first_token: FirstToken | None = None  # told the first token id once it is sampled
    text: str = ""  # everything generated so far (stop strings included)
    shown: int = 0  # characters of ``text`` already emitted
    cut: int | None = None  # where a stop string starts, once one appeared
    first_token_at: float | None = None
    context_before: int = 0  # cache positions before this turn's prompt
    prompt_tokens: int = 0  # tokens this turn prefilled

    @property
    def stopped_early(self) -> bool:
        """Whether generation ended on a stop string or a cancellation."""
        return self.cut is not None or self.cancelled.is_set()

    @property
    def answer(self) -> str:
        """The answer's text, cut before the first stop string."""
        return self.text if self.cut is None else self.text[: self.cut]

    def watched(self, steps: Iterable[tuple[int, float]]) -> Iterator[tuple[int, float]]:
        """``steps`` until they end, a stop string appears or the turn is cancelled."""
        for step in steps:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
                if self.first_token is not None:
                    self.first_token(step[0])
            yield step
            if self.stopped_early:
                return

    def on_text(self, delta: str) -> None:
        """New decoded text: look for stop strings, emit what is safe to show."""
        if self.cut is not None:
            return
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += delta
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if found:
            self.cut = min(found)
            self._emit_to(self.cut)
            return
        self._emit_to(len(self.text) - self._held_back())

    def finish(self) -> None:
        """Emit what was held back once generation has ended."""
        self._emit_to(len(self.answer))

    def _held_back(self) -> int:
        """Length of the longest end of ``text`` that begins a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit_to(self, end: int) -> None:
        if end > self.shown:
            self.emit(self.text[self.shown : end])
            self.shown = end
