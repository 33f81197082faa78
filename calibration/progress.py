"""Progress bars (tqdm, to stderr, silent when stderr is not a terminal).

tqdm comes with the export extra; ``drift`` also runs on a runtime-only install,
where the bar is simply left out.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


class _NoBar:
    def update(self, *_: Any) -> None:
        """Nothing to draw."""

    def set_postfix_str(self, *_: Any) -> None:
        """Nothing to say."""


def progress_bar(total: int, desc: str, unit: str) -> AbstractContextManager:
    """A context manager yielding an object with ``update()``."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return nullcontext(_NoBar())
    return tqdm(total=total, desc=desc, unit=unit, disable=None)
