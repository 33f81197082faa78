"""The runtime on exported tiny packages: parity with the reference, cache reuse, bad input.

Two random configs are exported once per module (the export dominates the
time): "video" scope with GQA 2 and tied head, "frame" scope with GQA 4,
``dcal_mlp`` and an untied head.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_checkpoint, tiny_config, write_test_video

from crosslmm_edge.cli import main
from crosslmm_edge.export.graphs.package import export_package
from crosslmm_edge.export.reference.reference_assistant import ReferenceAssistant
from crosslmm_edge.runtime.chat.assistant import RuntimeAssistant
from crosslmm_edge.runtime.chat.assistant_types import GenerationOptions
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.inference.generation import largest_visual_piece
from crosslmm_edge.runtime.inference.sampling import Sampler

QUESTIONS = ["What colour is the small dot?", "Which way does it move?", "Say more."]
GREEDY = GenerationOptions(max_new_tokens=60, logprobs=True)
CONFIGS = {
    "video": dict(v2v_scope="video", kv_heads=2, num_frames=4),
    "frame": dict(v2v_scope="frame", kv_heads=1, dcal_mlp=True, tie=False, num_frames=4),
}

# Runs the CLI where the export extra's packages and export code cannot be imported (a Jetson).
TORCH_FREE_CLI = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        # export's subpackage folders (docstrings only) hold the cheap *_commands modules
        export_code = name.startswith("crosslmm_edge.export.") and name.count(".") > 2
        export_code = export_code and not name.endswith("_commands")
        export_only = name.split(".")[0] in {"torch", "onnx", "onnxscript", "safetensors"}
        if export_only or export_code:
            raise ModuleNotFoundError(f"blocked in this test: {name}", name=name)
sys.meta_path.insert(0, Blocker())
from crosslmm_edge.cli import main
code = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per config: (checkpoint folder, package folder)."""
    root = tmp_path_factory.mktemp("runtime_models")
    out = {}
    for name, options in CONFIGS.items():
        checkpoint = save_tiny_checkpoint(root / f"ck-{name}", tiny_config(**options), seed=1)
        export_package(checkpoint, root / f"pkg-{name}")
        out[name] = (checkpoint, root / f"pkg-{name}")
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("runtime_video") / "v.mp4", frames=6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_package_matches_reference_greedy(models, video: Path, name: str) -> None:
    checkpoint, package = models[name]
    reference, runtime = ReferenceAssistant(checkpoint), RuntimeAssistant(package)
    reference.set_video(str(video))
    runtime.set_video(str(video))
    # The runtime answers another question first: the compared one forks from the prefix.
    assert runtime.ask(QUESTIONS[1], GREEDY).video_prefix_reused is False
    want, got = reference.ask(QUESTIONS[0], GREEDY), runtime.ask(QUESTIONS[0], GREEDY)
    assert len(want.token_ids) >= 50
    assert got.token_ids == want.token_ids and got.video_prefix_reused
    assert np.allclose(got.logprobs, want.logprobs, atol=1e-3)
    short = GenerationOptions(max_new_tokens=20)
    want = reference.follow_up(QUESTIONS[2], short)
    assert runtime.follow_up(QUESTIONS[2], short).token_ids == want.token_ids


def test_three_questions_in_one_torch_free_call_equal_separate_calls(models, video, tmp_path):
    package = models["video"][1]
    args = ["ask", str(package), "--video", str(video), "--json", "--max-new-tokens", "20"]
    for question in QUESTIONS:
        args += ["--question", question]
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_CLI, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert [a["video_prefix_reused"] for a in answers] == [False, True, True]
    options = GenerationOptions(max_new_tokens=20)
    for question, answer in zip(QUESTIONS, answers, strict=True):
        alone = RuntimeAssistant(package)
        alone.set_video(str(video))
        assert alone.ask(question, options).token_ids == answer["token_ids"]


def test_saved_video_state_gives_the_same_answers(models, video, tmp_path, capsys):
    package = models["frame"][1]
    state = tmp_path / "state.npz"
    base = ["ask", str(package), "--video", str(video), "--json", "--question", QUESTIONS[0]]
    assert main([*base, "--save-video-state", str(state)]) == 0
    fresh = json.loads(capsys.readouterr().out)["answers"][0]
    assert main([*base, "--video-state", str(state)]) == 0
    loaded = json.loads(capsys.readouterr().out)["answers"][0]
    assert loaded["token_ids"] == fresh["token_ids"]
    assert (fresh["video_prefix_reused"], loaded["video_prefix_reused"]) == (False, True)
    # The same state refused for another video, frame count or package.
    other_video = write_test_video(tmp_path / "other.mp4", frames=6, seed=5)
    cases = [(["--video", str(other_video)], "video_sha256"), (["--frames", "2"], "num_frames")]
    for extra, field in cases:
        assert main([*base, *extra, "--video-state", str(state)]) == 2
        assert f"{field} differs" in capsys.readouterr().err
    base[1] = str(models["video"][1])
    assert main([*base, "--video-state", str(state)]) == 2
    assert "the artifact files differ" in capsys.readouterr().err


def test_frame_scope_appends_frames_like_the_reference_prefilling_chunks(models, video):
    from crosslmm_edge.export.reference.generate import generate, new_cache, prefill, text_only
    from crosslmm_edge.runtime.video.decode import load_video

    checkpoint, package = models["frame"]
    pixels = load_video(video, 4, 16)  # [4, 3, 16, 16]
    runtime = RuntimeAssistant(package)
    runtime.start_live(pixels[:2])
    runtime.append_frames(pixels[2:])
    got = runtime.ask(QUESTIONS[0], GREEDY).token_ids

    reference = ReferenceAssistant(checkpoint)
    model, prompt = reference.model, reference.prompt
    with torch.no_grad():
        head, tail = (model.encode_video(torch.from_numpy(p)) for p in (pixels[:2], pixels[2:]))
    cross = [
        type(a)(
            *(torch.cat([x, y], 1) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
        )
        for a, b in zip(head.cross, tail.cross, strict=True)
    ]
    cache = new_cache(model, 256)
    prefill(model, cache, torch.tensor([prompt.video_prefix_ids()]), head.cross, head.visual_embeds)
    tail_cross = [
        type(c)(t.v2v_key, t.v2v_value, c.t2v_key, c.t2v_value)
        for c, t in zip(cross, tail.cross, strict=True)
    ]
    prefill(model, cache, torch.zeros(1, 0, dtype=torch.long), tail_cross, tail.visual_embeds)
    steps = generate(
        model,
        cache,
        text_only(cross),
        prompt.first_question_ids(QUESTIONS[0]),
        60,
        sorted(prompt.stop_token_ids),
        Sampler(banned_ids=[model.config.video_token_id]),
    )
    want = [t for t, _ in steps if t not in prompt.stop_token_ids]
    assert got == want and len(want) >= 50


def test_context_overflow_is_refused_up_front_with_counts(models, video, capsys):
    package = models["video"][1]
    args = [
        "ask",
        str(package),
        "--video",
        str(video),
        "--question",
        "x" * 300,
        "--max-new-tokens",
        "300",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prompt + video + max_new_tokens") and "context of 512" in err


def _zero_frame_avi(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 16
        container.start_encoding()
    return path


def test_bad_inputs_end_in_one_error_line(models, video, tmp_path, capsys):
    package = models["video"][1]
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.txt").write_text("not a video\n" * 50)
    broken = tmp_path / "pkg-broken"
    shutil.copytree(package, broken)
    with open(broken / "llm.onnx", "r+b") as graph:
        graph.truncate(1000)
    cases = [
        (package, ["--video", str(truncated)], str(truncated)),
        (package, ["--video", str(tmp_path / "noise.mp4")], "noise.mp4"),
        (package, ["--video", str(tmp_path / "notes.txt")], "notes.txt"),
        (package, ["--video", str(_zero_frame_avi(tmp_path / "zero.avi"))], "zero.avi"),
        (package, ["--video", str(video), "--provider", "warp-drive"], "warp-drive"),
        (broken, ["--video", str(video)], "llm.onnx"),
        (package, ["--video", str(video), "--frames", "9"], "at most 4"),
    ]
    for model, extra, named in cases:
        assert main(["ask", str(model), *extra, "--question", "hi"]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err


def test_missing_video_raises_user_error_in_the_api(models):
    runtime = RuntimeAssistant(models["video"][1])
    with pytest.raises(UserError, match="no video"):
        runtime.ask("hi", GREEDY)


@pytest.mark.parametrize("scope", ["video", "frame"])
def test_rolling_window_equals_a_fresh_start_on_its_last_frames(models, scope):
    from crosslmm_edge.runtime.chat.live import RollingWindow
    from crosslmm_edge.runtime.video.decode import preprocess

    package = models[scope][1]
    frames = np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    live = RuntimeAssistant(package)
    window = RollingWindow(live, seconds=2, source_fps=2, sample_fps=2, batch_frames=2)
    for rgb in frames:
        window.push(rgb)
    window.flush()
    assert window.frames_in_window == 4
    fresh = RuntimeAssistant(package)
    fresh.start_live(preprocess(frames[-4:], 16))
    assert np.allclose(live.state.visual_embeds, fresh.state.visual_embeds, atol=1e-5)
    # The whole prefix cache, header included, must equal the fresh one (frame scope too).
    live_keys, live_values = live.cache.prefix_arrays()
    fresh_keys, fresh_values = fresh.cache.prefix_arrays()
    for got, want in zip(live_keys + live_values, fresh_keys + fresh_values, strict=True):
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
    assert live.ask(QUESTIONS[0], GREEDY).token_ids == fresh.ask(QUESTIONS[0], GREEDY).token_ids
    with pytest.raises(UserError, match="at most 4"):
        RollingWindow(live, seconds=10, source_fps=2, sample_fps=2)


@pytest.mark.parametrize("scope", ["video", "frame"])
def test_prefill_in_pieces_equals_one_chunk(models, scope):
    package = models[scope][1]
    runtime = RuntimeAssistant(package)
    pipeline = runtime.pipeline
    frames = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    _, embeds, cross = pipeline.encode([frames])
    feeds = {name: pipeline.upload(value) for name, value in cross.items()}
    ids = list(range(5, 16))  # 11 text tokens, then 4 frames of visual tokens
    llm, runs = pipeline.sessions["llm"], []
    run = llm.run
    # record each piece's visual positions
    llm.run = lambda feeds, **kwargs: (
        runs.append(feeds["visual_embeds"].shape[1]) or run(feeds, **kwargs)
    )
    d = pipeline.dims
    per_query = 4 * pipeline.dims.num_heads * embeds.shape[1] * pipeline.dims.patches_per_frame
    results, counts = [], []
    # one chunk; pieces of one frame; pieces cut by the score budget (3 text tokens each)
    for limit, budget in (
        (10_000, 1 << 40),
        (pipeline.dims.tokens_per_frame, 1 << 40),
        (10_000, 3 * max(per_query, 4 * pipeline.dims.num_heads * 10_064)),
    ):
        pipeline.max_score_bytes = budget
        cache, runs[:] = pipeline.new_cache(64), []
        logits = np.array(pipeline.prefill(cache, ids, embeds, feeds, max_chunk_tokens=limit))
        results.append((logits, cache.prefix_arrays()))
        counts.append(len(runs))
        # what `build` sizes the TensorRT visual profile to: exactly the largest piece
        bound = largest_visual_piece(
            d.num_heads, d.tokens_per_frame, d.patches_per_frame, 4, scope == "frame", limit, budget
        )
        assert max(runs) == bound, (limit, budget, runs, bound)
    text_pieces = -(-len(ids) // pipeline.dims.tokens_per_frame)
    assert counts[0] == 1 and counts[1] == text_pieces + 4 and counts[2] > counts[1]
    (whole, (keys, values)), *split = results
    for pieces, (piece_keys, piece_values) in split:
        assert np.allclose(whole, pieces, atol=1e-4)
        for a, b in zip(keys + values, piece_keys + piece_values, strict=True):
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-4)


def test_optimized_graph_cache_answers_the_same(
    models, video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second open loads ONNX Runtime's saved optimized graphs and answers token for token."""
    _, package = models["video"]
    answers, sources = [], []
    for cache in ("off", str(tmp_path / "ort"), str(tmp_path / "ort")):
        monkeypatch.setenv("CROSSLMM_EDGE_ORT_CACHE", cache)
        runtime = RuntimeAssistant(package, provider="cpu")
        runtime.set_video(str(video))
        answer = runtime.ask(QUESTIONS[0], GREEDY)
        answers.append((answer.token_ids, answer.logprobs))
        sources.append(set(runtime.pipeline.backend.loaded_from.values()))
    assert sources == [{"plain"}, {"optimized"}, {"cache"}]
    assert answers[1] == answers[0] and answers[2] == answers[0]
