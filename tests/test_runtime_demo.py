"""``crosslmm-edge demo`` end to end, and parity of the embedded model's package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions

EMBEDDED = (embedded_model_dir() / "config.json").is_file()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo's work folder (video, package) and what it printed."""
    folder = tmp_path_factory.mktemp("demo")
    capture = pytest.MonkeyPatch()
    lines: list[str] = []
    capture.setattr("crosslmm_edge.demo._say", lines.append)
    try:
        assert main(["demo", "--out", str(folder), "--seed", "7"]) == 0
    finally:
        capture.undo()
    return folder, "\n".join(lines)


def test_demo_exports_then_answers_with_the_runtime(demo_run) -> None:
    folder, printed = demo_run
    assert (folder / "package" / "manifest.json").is_file()
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "exporting llm.onnx"):
        assert step in printed
    # Each question twice: with the FP32 graphs, then FP32 and INT8 side by side.
    assert printed.count("  Q: ") == 8 and printed.count("truth: ") == 8
    assert printed.count("prefix reused") == 3  # every question after the first
    assert printed.count("   int8 '") == 4 and "[INT8] drift" in printed
    assert ("RANDOM" in printed) != EMBEDDED


@pytest.mark.skipif(not EMBEDDED, reason="the embedded model is not installed")
def test_embedded_package_matches_reference_for_50_tokens(demo_run) -> None:
    from crosslmm_edge.export.generate import generate
    from crosslmm_edge.export.reference_assistant import ReferenceAssistant
    from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
    from crosslmm_edge.runtime.inference.sampling import Sampler

    folder, _ = demo_run
    video = str(next(folder.glob("scene-*.mp4")))
    reference, runtime = (
        ReferenceAssistant(embedded_model_dir()),
        RuntimeAssistant(folder / "package"),
    )
    reference.set_video(video)
    runtime.set_video(video)
    options = GenerationOptions(max_new_tokens=8)
    for question in ("what colour is the object?", "which way does it move?"):
        assert (
            runtime.ask(question, options).token_ids == reference.ask(question, options).token_ids
        )
    # A trained model stops after one word: run 50 tokens with no stop token instead.
    prompt_ids = runtime.prompt.first_question_ids("what shape is it?")
    reference.reset()
    runtime.reset()
    banned = [runtime.dims.video_token_id]
    with torch.no_grad():
        want = [
            t
            for t, _ in generate(
                reference.model,
                reference.cache,
                reference.video.cross,
                prompt_ids,
                50,
                [],
                Sampler(banned_ids=banned),
            )
        ]
    got = [
        t
        for t, _ in runtime.pipeline.generate(
            runtime.cache, runtime.text_cross, prompt_ids, Sampler(banned_ids=banned), 50, []
        )
    ]
    assert len(want) == 50 and got == want
