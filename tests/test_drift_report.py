"""Drift metrics, and the offline HTML report rendered in a headless browser."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crosslmm_edge.calibration.drift import StageDrift, TokenDrift
from crosslmm_edge.calibration.drift_run import DriftResult


def test_stage_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 6, 4)).astype(np.float32)  # 3 frames of 2 tokens
    test = ref.copy()
    test[0, 4:] += 0.1  # only the last frame is off
    stage = StageDrift()
    stage.add(ref, test, tokens_per_frame=2)
    noise, signal = 0.1**2 * 8, float(np.sum(ref.astype(np.float64) ** 2))
    assert stage.rel_l2 == pytest.approx(math.sqrt(noise / signal), rel=1e-5)
    assert stage.sqnr_db == pytest.approx(10 * math.log10(signal / noise), rel=1e-5)
    assert stage.max_abs == pytest.approx(0.1, rel=1e-5)
    per_frame = stage.to_json()["rel_l2_per_frame"]
    assert per_frame[0] == per_frame[1] == 0.0 and per_frame[2] > 0.01
    same = StageDrift()
    same.add(ref, ref)
    assert same.sqnr_db is None and same.to_json()["identical"]


def test_token_drift_kl_and_agreement() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    tokens = TokenDrift()
    tokens.add(logits, logits)
    assert tokens.kl_mean == 0.0 and tokens.top1_agreement == 1.0
    flipped = TokenDrift()
    flipped.add(logits, logits[:, ::-1])
    assert flipped.kl_mean > 0.5 and flipped.top1_agreement == 0.5


def _report() -> dict:
    rng = np.random.default_rng(1)
    result = DriftResult("pkg@fp32", "pkg@int8")
    for stage in result.stages.values():
        ref = rng.standard_normal((1, 16, 8))
        stage.add(ref, ref + 0.05 * rng.standard_normal(ref.shape), tokens_per_frame=4)
    for layer in range(3):
        result.prefix_layers.setdefault(layer, StageDrift()).add(
            np.ones((1, 2, 2)), np.ones((1, 2, 2)) * 1.1
        )
    result.tokens.add(rng.standard_normal((5, 10)), rng.standard_normal((5, 10)))
    for qtype in ("colour", "dot"):
        result.score("ref", qtype, True)
        result.score("test", qtype, qtype == "colour")
    result.videos, result.questions = 1, 2
    return result.to_json()


def test_html_is_self_contained(tmp_path: Path) -> None:
    from crosslmm_edge.calibration.drift_report import html_report

    page = html_report(_report())
    assert "<script src=" not in page.replace(" ", "") and "<link" not in page
    assert page.count("Plotly.newPlot") == 4


def _browser() -> str | None:
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
    )


@pytest.mark.skipif(
    _browser() is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_html_plots_render_offline_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    from crosslmm_edge.calibration.drift_report import html_report

    page = tmp_path / "report.html"
    page.write_text(html_report(_report()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-proxy-server",
        "--proxy-server=127.0.0.1:9",
        "--window-size=1200,2400",
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # Plotly's first trace colour #636efa: present only if the bars were drawn.
    blue = np.all(np.abs(pixels - np.array([0x63, 0x6E, 0xFA])) < 12, axis=-1)
    assert blue.sum() > 500, f"no plot drawn ({blue.sum()} pixels of the bar colour)"
