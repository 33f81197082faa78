"""The synthetic video world: deterministic, and its ground truth is what it draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslmm_edge.calibration.world import synthetic_world as world
from crosslmm_edge.export.reference.projector import pooling_matrix
from crosslmm_edge.runtime.video.decode import sample_indices

CELLS = world.FRAME_SIZE // world.PATCH


def object_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    """[k, 2] (y, x) of pixels close to ``colour``."""
    distance = np.abs(frame.astype(int) - np.array(world.COLOURS[colour])).sum(-1)
    return np.argwhere(distance < 40)


def test_same_seed_same_video_and_questions():
    a, b = world.make_scene(11, 4), world.make_scene(11, 4)
    assert a == b
    assert np.array_equal(world.render(a), world.render(b))
    assert world.questions(a, 11, 4) == world.questions(b, 11, 4)


def test_different_indices_and_seeds_differ():
    scenes = {world.make_scene(seed, index) for seed in (0, 1) for index in range(20)}
    assert len(scenes) == 40


@pytest.mark.parametrize("index", range(12))
def test_ground_truth_matches_the_pixels(index):
    scene = world.make_scene(3, index)
    frames = world.render(scene)  # [8, 32, 32, 3]
    assert frames.shape == (world.SEGMENTS, world.FRAME_SIZE, world.FRAME_SIZE, 3)
    first = object_pixels(frames[0], scene.colour).mean(0)
    last = object_pixels(frames[-1], scene.colour).mean(0)
    dx, dy = world.DIRECTIONS[scene.direction]
    moved = last - first  # (y, x)
    assert moved[1] * dx + moved[0] * dy > 8  # along the stated direction
    assert abs(moved[1] * dy + moved[0] * dx) < 2  # and not across it


def test_the_dot_shows_in_one_frame_on_an_unpooled_patch():
    weights = pooling_matrix(CELLS * CELLS, 2, "bilinear")  # [4, 64]
    for index in range(30):
        scene = world.make_scene(5, index)
        frames = world.render(scene)
        x, y = scene.dot_xy
        colour = np.array(world.COLOURS[scene.dot_colour])
        shows = [bool(np.all(f[y : y + 2, x : x + 2] == colour)) for f in frames]
        assert shows == [t == scene.dot_segment for t in range(world.SEGMENTS)]
        patch = (y // world.PATCH) * CELLS + x // world.PATCH
        assert torch.all(weights[:, patch] == 0), "pooled tokens must not see the dot's patch"


def test_longer_videos_keep_the_dot_in_exactly_one_sampled_frame():
    scene = world.make_scene(8, 2)
    frames = world.render(scene, num_frames=32)
    x, y = scene.dot_xy
    colour = np.array(world.COLOURS[scene.dot_colour])
    sampled = frames[sample_indices(32, world.SEGMENTS)]
    shows = [bool(np.all(f[y : y + 2, x : x + 2] == colour)) for f in sampled]
    assert sum(shows) == 1


def test_questions_cover_every_type_with_several_phrasings():
    scene = world.make_scene(0, 0)
    qas = world.questions(scene, 0, 0)
    assert [qa.qtype for qa in qas] == list(world.QUESTION_TYPES)
    assert all(qa.answer in world.answer_vocabulary() for qa in qas)
    seen = {qa.question for index in range(40) for qa in world.questions(scene, 0, index)}
    assert len(seen) >= 3 * len(world.QUESTION_TYPES)


def test_answers_are_balanced():
    counts: dict[str, int] = {}
    for index in range(400):
        word = world.make_scene(9, index).direction
        counts[word] = counts.get(word, 0) + 1
    assert set(counts) == set(world.DIRECTIONS)
    assert min(counts.values()) > 60


@pytest.mark.parametrize(
    ("text", "word"),
    [("Red.", "red"), ("  blue circle", "blue"), ("", ""), ("Triangle!", "triangle")],
)
def test_normalise_answer(text, word):
    assert world.normalise_answer(text) == word
