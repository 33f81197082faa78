"""Drift metrics and verdict, and the HTML report as a reader sees it in headless Chromium.

The browser tests run ``drift`` for real: the embedded model against a copy
whose layer-1 MLP weight is scaled tenfold, which changes an answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from headless_chromium import chromium_browser, needs_chromium
from package_damage import scaled_weight_copy
from trust_helpers import exported_package

from crosslmm_edge.calibration.drift.drift import StageDrift, TokenDrift
from crosslmm_edge.calibration.drift.drift_result import AnswerPair, DriftResult, VideoDrift
from crosslmm_edge.calibration.drift.drift_verdict import drift_verdict
from crosslmm_edge.calibration.world.evaluate import write_scene_video
from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir

DAMAGED_MODULE = "model.language_model.model.layers.1.mlp.down_proj"
STAGE_ROWS = ["vision features", "pooled embeddings", "cross K/V", "logits"]

needs_browser = needs_chromium
needs_model = pytest.mark.skipif(
    not (embedded_model_dir() / "config.json").is_file(), reason="embedded model not installed"
)


def test_stage_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 6, 4)).astype(np.float32)  # 3 frames of 2 tokens
    test = ref.copy()
    test[0, 4:] += 0.1  # only the last frame is off
    stage = StageDrift()
    stage.add(ref, test, frames=3)
    noise, signal = 0.1**2 * 8, float(np.sum(ref.astype(np.float64) ** 2))
    assert stage.rel_l2 == pytest.approx(math.sqrt(noise / signal), rel=1e-5)
    assert stage.sqnr_db == pytest.approx(10 * math.log10(signal / noise), rel=1e-5)
    assert stage.max_abs == pytest.approx(0.1, rel=1e-5)
    per_frame = stage.to_json()["rel_l2_per_frame"]
    assert per_frame[0] == per_frame[1] == 0.0 and per_frame[2] > 0.01
    same = StageDrift()
    same.add(ref, ref)
    assert same.sqnr_db is None and same.to_json()["identical"]


def test_frames_are_numbered_within_each_video_heads_are_not_frames() -> None:
    """Cross K/V [1, T·N, heads, D] of two videos: T entries, the error where it was put."""
    rng = np.random.default_rng(2)
    frames, tokens, heads = 4, 3, 2
    stage = StageDrift()
    for _ in range(2):  # two videos, same frame numbers
        ref = rng.standard_normal((1, frames * tokens, heads, 5))
        test = ref.copy()
        test[0, 2 * tokens : 3 * tokens] += 0.5  # frame 2, every head
        stage.add(ref, test, frames)
    per_frame = stage.rel_l2_per_frame
    assert len(per_frame) == frames
    assert per_frame[2] > 0.1 and per_frame[0] == per_frame[1] == per_frame[3] == 0.0


def test_token_drift_kl_and_agreement() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    tokens = TokenDrift()
    tokens.add(logits, logits)
    assert tokens.kl_mean == 0.0 and tokens.top1_agreement == 1.0
    flipped = TokenDrift()
    flipped.add(logits, logits[:, ::-1])
    assert flipped.kl_mean > 0.5 and flipped.top1_agreement == 0.5


def test_verdict_judges_the_worst_type_drop_against_the_budget() -> None:
    accuracy = {"ref": {"colour": 1.0, "dot": 1.0}, "test": {"colour": 1.0, "dot": 0.75}}
    default = drift_verdict(accuracy, 8, 0, 0, None)
    assert default["budget_points"] == 1.0 and default["budget_source"] == "default"
    assert not default["within"] and default["checks"][0]["points"] == pytest.approx(25.0)
    assert "dot" in default["checks"][0]["detail"]
    assert drift_verdict(accuracy, 8, 0, 0, 25.0)["within"]  # equal to the budget is within


def test_verdict_without_ground_truth_counts_changed_answers() -> None:
    verdict = drift_verdict({}, 0, 4, 1, 30.0)
    (check,) = verdict["checks"]
    assert "changed" in check["measure"] and check["points"] == 25.0 and verdict["within"]
    assert not drift_verdict({}, 0, 4, 1, 20.0)["within"]


def _report(ground_truth: bool) -> DriftResult:
    """A hand-filled result: 2 videos of 4 frames, one changed answer."""
    rng = np.random.default_rng(1)
    result = DriftResult("pkg@fp32", "pkg@int8")
    for index in range(2):
        video = VideoDrift(f"v{index}.mp4", 4, ground_truth)
        for name, stage in video.stages.items():
            ref = rng.standard_normal((4, 2, 8))
            test = ref + 0.05 * rng.standard_normal(ref.shape)
            stage.add(ref, test, 4)
            result.stages[name].add(ref, test, 4)
        result.per_video.append(video)
    result.stages["logits"].add(np.ones((3, 10)), np.ones((3, 10)) * 1.1)
    result.prefix_layers[0] = result.stages["logits"]
    result.tokens.add(rng.standard_normal((5, 10)), rng.standard_normal((5, 10)))
    for qtype, same in (("colour", True), ("dot", False)):
        truth = "red" if ground_truth else None
        result.answers.append(AnswerPair(1, f"{qtype}?", qtype, truth, "red", "blue", same))
        if ground_truth:
            result.score("ref", qtype, True)
            result.score("test", qtype, same)
    return result


@pytest.mark.parametrize(("ground_truth", "plots"), [(True, 3), (False, 2)])
def test_html_is_self_contained(ground_truth: bool, plots: int) -> None:
    from crosslmm_edge.calibration.drift.drift_report import html_report

    report = _report(ground_truth).to_json()
    page = html_report(report)
    assert "<script src=" not in page.replace(" ", "") and "<link" not in page
    assert page.count("Plotly.newPlot") == plots  # no accuracy chart without ground truth
    assert page.count("<tr class='changed'>") == len(report["changed_answers"]) == 1


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real drift reports of a damaged package: synthetic videos (ground truth) and plain ones."""
    folder = tmp_path_factory.mktemp("drift-report")
    package = exported_package(tmp_path_factory)
    broken = scaled_weight_copy(package, folder / "x10", DAMAGED_MODULE, 10.0)
    sides = [str(package), str(broken)]
    truth = ["--synthetic", "2", "--max-drift", "10"]  # one dot answer lost: 50 points, over
    assert main(["drift", *sides, *truth, *_outputs(folder / "truth")]) == 1
    plain = folder / "plain"
    plain.mkdir()
    write_scene_video(plain / "clip.mp4", 1, 0, 8)
    no_truth = ["--videos", str(plain), "--max-drift", "100"]
    assert main(["drift", *sides, *no_truth, *_outputs(folder / "no-truth")]) == 0
    return {"truth": folder / "truth", "no-truth": folder / "no-truth"}


def _outputs(stem: Path) -> list[str]:
    return ["--json", f"{stem}.json", "--html", f"{stem}.html"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright (never a downloaded browser)."""
    with chromium_browser() as chromium:
        yield chromium


def open_report(browser, stem: Path):
    """The page of ``stem``.html with its plots drawn, and every URL it asked for."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.route("**/*", _local_only)
    page.goto(stem.with_suffix(".html").as_uri())
    page.wait_for_function("document.querySelectorAll('#layers .main-svg').length > 0")
    return page, requested


def _local_only(route) -> None:
    """Let the page read its own file; refuse anything from a network."""
    if route.request.url.startswith(("file:", "data:")):
        route.continue_()
    else:
        route.abort()


@needs_model
@needs_browser
def test_report_shows_verdict_stages_and_changed_answers(reports, browser) -> None:
    data = json.loads(reports["truth"].with_suffix(".json").read_text())
    page, requested = open_report(browser, reports["truth"])
    verdict = page.inner_text("#verdict")
    assert "Over budget" in verdict and "10 points" in verdict and "--max-drift" in verdict
    rows = page.locator("#stages tbody tr")
    assert rows.count() == 4
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(4)]
    assert [row[0] for row in cells] == STAGE_ROWS
    assert cells[3][2] == f"{data['stages']['logits']['sqnr_db']:.1f} dB"
    assert cells[0][2] == "identical"  # only the LLM was damaged
    changed = page.locator("#changed tr.changed")
    assert changed.count() == len(data["changed_answers"]) >= 1
    first = data["changed_answers"][0]
    assert first["question"] in changed.first.inner_text()
    decoded = page.eval_on_selector(
        "#changed img", "img => img.complete && img.naturalWidth > 0 && img.src.slice(0, 15)"
    )
    assert decoded == "data:image/png;"
    assert page.locator("#accuracy .main-svg").count() > 0
    frames = page.evaluate("document.getElementById('frames').data.map(t => t.x.length)")
    assert frames and set(frames) == {8}  # every stage, every video: frames 0..7
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    page.close()


@needs_model
@needs_browser
def test_report_without_ground_truth_has_no_accuracy_chart(reports, browser) -> None:
    page, requested = open_report(browser, reports["no-truth"])
    assert "Within budget" in page.inner_text("#verdict")
    assert "answers changed" in page.inner_text("#verdict")
    assert page.locator("#accuracy").count() == 0
    assert "ground truth" in page.inner_text("#no-accuracy")
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    page.close()


@pytest.mark.parametrize("budget", ["-1", "nan"])
def test_a_budget_below_zero_is_one_error_line(capsys, budget: str) -> None:
    assert main(["drift", "a", "b", "--synthetic", "1", "--max-drift", budget]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --max-drift") and budget in err[0]
