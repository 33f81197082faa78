"""``synth-video`` and ``eval`` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import single_thread  # noqa: F401  (autouse: torch on 1 thread)

from crosslmm_edge.calibration.world import synthetic_world as world
from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.video.decode import load_video


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_synth_video_writes_the_scene_and_its_ground_truth(tmp_path, capsys):
    out = tmp_path / "scene.mp4"
    printed = run_json(capsys, ["synth-video", "--out", str(out), "--seed", "21", "--json"])
    scene = world.make_scene(21, 0)
    assert printed["video"] == str(out)
    assert [qa["answer"] for qa in printed["qa"]] == list(world.answers(scene).values())
    frames = load_video(out, world.SEGMENTS, world.FRAME_SIZE)  # [8, 3, 32, 32] in [-1, 1]
    drawn = world.render(scene).transpose(0, 3, 1, 2) / 127.5 - 1.0
    assert abs(frames - drawn).mean() < 0.05  # the mp4 holds the rendered scene


def test_synth_video_is_deterministic_and_honours_frames(tmp_path, capsys):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    argv = ["synth-video", "--seed", "4", "--frames", "16", "--json", "--out"]
    first = run_json(capsys, [*argv, str(a)])
    second = run_json(capsys, [*argv, str(b)])
    assert first["qa"] == second["qa"]
    frames_a, frames_b = load_video(a, 64, world.FRAME_SIZE), load_video(b, 64, world.FRAME_SIZE)
    assert frames_a.shape[0] == 16
    assert np.array_equal(frames_a, frames_b)  # lossless: the same pixels in every run


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["eval", "--synthetic", "0", "--seed", "1"], "0"),
        (["eval", "--synthetic", "-3", "--seed", "1"], "-3"),
        (["eval", "/no/such/model", "--synthetic", "2", "--seed", "1"], "/no/such/model"),
        (["synth-video", "--out", "/no/such/dir/x.mp4", "--seed", "1"], "/no/such/dir"),
        (["synth-video", "--out", "x.mp4", "--seed", "1", "--frames", "0"], "0"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(argv, named, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and named in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_eval_reports_accuracy_per_type_on_the_embedded_model(capsys):
    printed = run_json(
        capsys, ["eval", str(embedded_model_dir()), "--synthetic", "3", "--seed", "77", "--json"]
    )
    assert printed["n_questions"] == 3 * len(world.QUESTION_TYPES)
    assert set(printed["per_type"]) == set(world.QUESTION_TYPES)
    mean = sum(printed["per_type"].values()) / len(printed["per_type"])
    assert printed["accuracy"] == pytest.approx(mean)  # one question per type per video
    assert 0.0 <= printed["accuracy"] <= 1.0
