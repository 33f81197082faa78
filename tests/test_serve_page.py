"""The web page of ``serve`` in a real headless Chromium: it loads, a question streams its answer.

Uses the ``playwright`` package with the system's Chromium (Debian's
``chromium`` package at /usr/bin/chromium); it never downloads a browser.
"""

from __future__ import annotations

from pathlib import Path

from headless_chromium import chromium_browser, needs_chromium

from crosslmm_edge.demo import embedded_package
from crosslmm_edge.runtime.serve.settings import ServeSettings
from tests.serve_helpers import MODEL, running_server, scene_videos

pytestmark = needs_chromium


def test_page_streams_an_answer_and_uploads(tmp_path: Path) -> None:
    scenes = scene_videos(tmp_path / "media", (1, 2))
    qa = scenes["scene-1.mp4"][1]
    settings = ServeSettings(model_name=MODEL, media_dir=tmp_path / "media")
    with (
        running_server(embedded_package(log=lambda message: None), settings) as url,
        chromium_browser() as browser,
    ):
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#video option[value='scene-1.mp4']", state="attached")
        page.select_option("#video", "scene-1.mp4")
        page.fill("#question", qa.question)
        for reuse in ("video encoded now", "video reused"):
            page.click("#ask")
            page.wait_for_function(
                "document.getElementById('status').textContent === 'done'", timeout=30_000
            )
            assert page.text_content("#answer").strip().split()[0] == qa.answer
            stats = page.text_content("#stats")
            assert "ms to first token" in stats and reuse in stats
        page.set_input_files("#upload", str(tmp_path / "media" / "scene-2.mp4"))
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('uploaded as video-')",
            timeout=30_000,
        )
        assert page.input_value("#video").startswith("video-")
