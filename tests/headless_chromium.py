"""Debian's headless Chromium driven by playwright, for the page tests.

Never a downloaded browser: ``.ci/run`` installs Debian's ``chromium``; without
it the tests that need it skip with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Background networking off: this machine's closed network refuses those connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"no {CHROMIUM} (apt-get install -y chromium)"
)


@contextmanager
def chromium_browser() -> Iterator:
    """A launched browser, closed on exit (skips the test without playwright)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
