"""``crosslmm-edge ask`` on a tiny checkpoint and a generated mp4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import (  # single_thread: an autouse fixture
    save_tiny_checkpoint,
    tiny_config,
    write_test_video,
)

from crosslmm_edge.cli import main
from crosslmm_edge.export.checkpoints.checkpoint import load_checkpoint
from crosslmm_edge.export.reference.generate import new_cache, prefill, prefill_video_prefix
from crosslmm_edge.runtime.chat.prompt import PromptBuilder
from crosslmm_edge.runtime.video.decode import load_video

QUESTIONS = ["What colour is the square?", "Which way does it move?", "Is there a dot?"]
ANSWER_KEYS = {
    "question",
    "answer",
    "token_ids",
    "ttft_s",
    "decode_tokens_per_s",
    "video_prefix_reused",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A saved tiny checkpoint (sharded, non-zero DCAL gates) and a 6-frame mp4."""
    root = tmp_path_factory.mktemp("ask")
    folder = save_tiny_checkpoint(
        root / "tiny", tiny_config(dcal_mlp=True), seed=4, max_shard_bytes=60_000
    )
    return folder, write_test_video(root / "clip.mp4", frames=6, size=24)


def _ask_json(capsys, folder: Path, video: Path, questions: list[str], *extra: str) -> list[dict]:
    args = ["ask", str(folder), "--video", str(video), "--max-new-tokens", "8", "--json"]
    for question in questions:
        args += ["--question", question]
    assert main(args + list(extra)) == 0
    return json.loads(capsys.readouterr().out)["answers"]


def test_ask_subprocess_json_schema(setup):
    folder, video = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "crosslmm_edge",
        "ask",
        str(folder),
        "--video",
        str(video),
        "--question",
        QUESTIONS[0],
        "--question",
        QUESTIONS[1],
        "--max-new-tokens",
        "6",
        "--json",
        "--logprobs",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert [a["question"] for a in answers] == QUESTIONS[:2]
    for answer in answers:
        assert set(answer) == ANSWER_KEYS | {"logprobs"}
        assert isinstance(answer["answer"], str)
        assert 1 <= len(answer["token_ids"]) <= 6
        assert all(isinstance(t, int) for t in answer["token_ids"])
        assert len(answer["logprobs"]) == len(answer["token_ids"])
        assert all(lp <= 0 for lp in answer["logprobs"])
        assert answer["ttft_s"] > 0 and answer["decode_tokens_per_s"] >= 0
    assert [a["video_prefix_reused"] for a in answers] == [False, True]


def test_no_logprobs_without_flag(setup, capsys):
    answers = _ask_json(capsys, *setup, QUESTIONS[:1])
    assert set(answers[0]) == ANSWER_KEYS


@torch.no_grad()
def _independent_logprobs(folder: Path, video: Path, question: str, tokens: list[int]):
    """log-softmax over the whole vocabulary at each answer token, from one forward."""
    model = load_checkpoint(folder)
    prompt = PromptBuilder.from_dir(folder)
    frames = load_video(video, model.config.num_frames, model.config.vision_config.image_size)
    features = model.encode_video(torch.from_numpy(frames))
    cache = new_cache(model, 256)
    prefill_video_prefix(model, cache, torch.tensor([prompt.video_prefix_ids()]), features)
    text = prompt.first_question_ids(question) + tokens
    logits = prefill(model, cache, torch.tensor([text]), features.cross)[0]  # [L, V]
    steps = logits[len(text) - len(tokens) - 1 : -1]  # the logits that chose each token
    return torch.log_softmax(steps.double(), -1)[torch.arange(len(tokens)), tokens], steps


def test_logprobs_equal_independent_log_softmax(setup, capsys):
    folder, video = setup
    answer = _ask_json(capsys, folder, video, QUESTIONS[:1], "--logprobs")[0]
    expected, logits = _independent_logprobs(folder, video, QUESTIONS[0], answer["token_ids"])
    assert torch.allclose(
        torch.tensor(answer["logprobs"], dtype=torch.float64), expected, atol=1e-5
    )
    logits[:, load_checkpoint(folder).config.video_token_id] = float("-inf")
    assert answer["token_ids"] == logits.argmax(-1).tolist()  # greedy by default


def test_three_questions_equal_three_calls(setup, capsys):
    together = _ask_json(capsys, *setup, QUESTIONS, "--logprobs")
    apart = [_ask_json(capsys, *setup, [q], "--logprobs")[0] for q in QUESTIONS]
    assert [a["token_ids"] for a in together] == [a["token_ids"] for a in apart]
    assert [a["logprobs"] for a in together] == [a["logprobs"] for a in apart]
    assert len({tuple(a["token_ids"]) for a in together}) > 1  # the questions matter


def test_sampling_with_seed_reproducible(setup, capsys):
    options = ["--temperature", "1.5", "--top-p", "0.9", "--seed"]
    first = _ask_json(capsys, *setup, QUESTIONS[:1], *options, "3")[0]["token_ids"]
    again = _ask_json(capsys, *setup, QUESTIONS[:1], *options, "3")[0]["token_ids"]
    assert first == again


def test_streamed_text_output(setup, capsys):
    folder, video = setup
    args = [
        "ask",
        str(folder),
        "--video",
        str(video),
        "--question",
        QUESTIONS[0],
        "--max-new-tokens",
        "5",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    answer = _ask_json(capsys, folder, video, QUESTIONS[:1], "--max-new-tokens", "5")[0]
    assert f"Q: {QUESTIONS[0]}" in out and f"A: {answer['answer']}" in out


@pytest.mark.parametrize(
    "content", [b"", b"this is plain text, not a video\n" * 20], ids=["empty", "text"]
)
def test_non_video_file_one_error_line(setup, tmp_path, capsys, content):
    folder, _ = setup
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(content)
    code = main(["ask", str(folder), "--video", str(bad), "--question", "q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and str(bad) in err[0]


def test_context_overflow_refused_with_counts(setup, capsys):
    folder, video = setup
    code = main(
        [
            "ask",
            str(folder),
            "--video",
            str(video),
            "--question",
            "q",
            "--max-context",
            "60",
            "--max-new-tokens",
            "40",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "40 new" in err[0] and "60" in err[0]


def test_chat_follow_up_and_commands(setup, tmp_path, monkeypatch, capsys):
    import io

    folder, video = setup
    other = write_test_video(tmp_path / "other.mp4", frames=4, size=24, seed=9)
    script = (
        f"{QUESTIONS[0]}\n{QUESTIONS[1]}\n/reset\n/video {tmp_path}/missing.mp4\n"
        f"/video {other}\n{QUESTIONS[2]}\n/quit\nnever asked\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", str(folder), "--video", str(video), "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.count("> ") == 3
    assert "missing.mp4" in err and "(conversation reset)" in err


def test_a_broken_package_fails_cleanly_without_torch(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "manifest.json").write_text("{}")
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "from crosslmm_edge.cli import main\n"
        f"sys.exit(main(['ask', {str(package)!r}, '--video', 'x.mp4', '--question', 'q']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(package) in lines[0]


@torch.no_grad()
def test_follow_up_equals_whole_conversation(setup):
    from crosslmm_edge.export.reference.reference_assistant import ReferenceAssistant
    from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions

    folder, video = setup
    assistant = ReferenceAssistant(folder)
    assistant.set_video(str(video))
    options = GenerationOptions(max_new_tokens=5, logprobs=True)
    first = assistant.ask(QUESTIONS[0], options)
    second = assistant.follow_up(QUESTIONS[1], options)
    assert second.video_prefix_reused
    # Independently: greedy over full re-prefills of the whole conversation.
    model, prompt = assistant.model, assistant.prompt
    frames = load_video(video, model.config.num_frames, model.config.vision_config.image_size)
    features = model.encode_video(torch.from_numpy(frames))
    text = (
        prompt.first_question_ids(QUESTIONS[0])
        + first.token_ids
        + prompt.next_turn_ids(QUESTIONS[1])
    )
    expected, logprobs = [], []
    for _ in range(5):
        cache = new_cache(model, 256)
        prefill_video_prefix(model, cache, torch.tensor([prompt.video_prefix_ids()]), features)
        logits = prefill(model, cache, torch.tensor([text + expected]), features.cross)[0, -1]
        full = torch.log_softmax(logits, -1)
        logits[model.config.video_token_id] = float("-inf")
        token = int(logits.argmax())
        if token in prompt.stop_token_ids:
            break
        expected.append(token)
        logprobs.append(float(full[token]))
    assert second.token_ids == expected
    assert torch.allclose(torch.tensor(second.logprobs), torch.tensor(logprobs), atol=1e-5)
    fresh = assistant.ask(QUESTIONS[1], options)  # the earlier turn must have mattered
    assert fresh.token_ids != expected or not torch.allclose(
        torch.tensor(fresh.logprobs), torch.tensor(logprobs), atol=1e-3
    )
