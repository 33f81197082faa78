"""A tiny synthetic video world with questions whose answers are known.

Each scene is one coloured shape moving in a straight line across a dark,
lightly noisy background, plus a small dot that flashes during one of the
``SEGMENTS`` equal time segments of the clip. The dot sits on a patch that the
bilinear 8→2 token pooling does not sample (patch rows and columns 0, 3, 4, 7
of an 8×8 grid get weight 0 with ``align_corners=False``), so only the
original patch tokens (the DCAL memory) see it. The memory has no temporal
position, so we only ask *what colour* the dot is, never *when* it appeared.

Everything is numpy and deterministic per ``(seed, index)``; torch is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_SIZE = 32  # pixels per side; the tiny model's image_size
PATCH = 4  # pixels per patch side; 8×8 patch grid
SEGMENTS = 8  # the dot shows during one of these equal time segments
OBJECT_SIZE = 10  # pixels per side of the shape's bounding box
DOT_SIZE = 2  # pixels per side of the small dot
UNPOOLED = (0, 3, 4, 7)  # patch rows/cols that 8→2 bilinear pooling ignores

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 220, 40),
    "white": (240, 240, 240),
}
SHAPES = ("square", "circle", "triangle", "cross")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = 40  # grey level of the background

PHRASINGS = {
    "colour": (
        "what colour is the moving object?",
        "what color is the shape?",
        "which colour does the object have?",
        "what is the colour of the moving shape?",
    ),
    "shape": (
        "what shape is the moving object?",
        "which shape is moving?",
        "what kind of shape is it?",
        "what is the shape of the object?",
    ),
    "direction": (
        "which way does the object move?",
        "in which direction is the shape moving?",
        "where is the object going?",
        "what direction does the shape move in?",
    ),
    "dot": (
        "what colour is the small dot?",
        "what color was the tiny dot?",
        "which colour is the dot that flashes?",
        "what is the colour of the little dot?",
    ),
}
QUESTION_TYPES = tuple(PHRASINGS)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one video, in pixels of a FRAME_SIZE frame."""

    colour: str
    shape: str
    direction: str
    start: tuple[float, float]  # top-left (x, y) of the shape's box at t = 0
    travel: float  # pixels moved from the first to the last frame
    dot_colour: str
    dot_xy: tuple[int, int]  # top-left pixel of the dot
    dot_segment: int  # the time segment (0..SEGMENTS-1) showing the dot
    noise_seed: int


@dataclass(frozen=True)
class QA:
    """One question about a scene, its type and its one-word answer."""

    question: str
    answer: str
    qtype: str


def make_scene(seed: int, index: int = 0) -> Scene:
    """The scene number ``index`` of the stream ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    direction = str(rng.choice(list(DIRECTIONS)))
    travel = float(rng.uniform(10, 16))
    span = FRAME_SIZE - OBJECT_SIZE - travel  # room left for the start along the motion
    dx, dy = DIRECTIONS[direction]
    along = rng.uniform(0, span)
    across = rng.uniform(0, FRAME_SIZE - OBJECT_SIZE)
    main = along if (dx > 0 or dy > 0) else along + travel  # start at the far side
    start = (main, across) if dx else (across, main)
    segment = int(rng.integers(SEGMENTS))
    box = box_at(start, direction, travel, (segment + 0.5) / SEGMENTS)
    return Scene(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        direction=direction,
        start=(float(start[0]), float(start[1])),
        travel=travel,
        dot_colour=str(rng.choice(list(COLOURS))),
        dot_xy=_dot_position(rng, box),
        dot_segment=segment,
        noise_seed=int(rng.integers(2**31)),
    )


def box_at(
    start: tuple[float, float], direction: str, travel: float, progress: float
) -> tuple[float, float]:
    """Top-left (x, y) of the shape's box at ``progress`` in [0, 1] of the clip."""
    dx, dy = DIRECTIONS[direction]
    return start[0] + dx * travel * progress, start[1] + dy * travel * progress


def _dot_position(rng: np.random.Generator, box: tuple[float, float]) -> tuple[int, int]:
    """A dot on an unpooled patch, away from the shape while it shows."""
    candidates = []
    for row in UNPOOLED:
        for col in UNPOOLED:
            # Even offsets keep the dot on whole 2×2 chroma blocks of yuv420 video.
            x = col * PATCH + 2 * int(rng.integers(2))
            y = row * PATCH + 2 * int(rng.integers(2))
            clear = (
                x + DOT_SIZE + 2 <= box[0]
                or x >= box[0] + OBJECT_SIZE + 2
                or y + DOT_SIZE + 2 <= box[1]
                or y >= box[1] + OBJECT_SIZE + 2
            )
            if clear:
                candidates.append((x, y))
    x, y = candidates[int(rng.integers(len(candidates)))]
    return int(x), int(y)


def shape_mask(shape: str, size: int = OBJECT_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of ``shape``."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    x, y = np.meshgrid(coords, coords)
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return x**2 + y**2 <= 1.0
    if shape == "triangle":  # apex up
        return (y >= -1) & (np.abs(x) <= (y + 1) / 2)
    if shape == "cross":
        return (np.abs(x) <= 0.34) | (np.abs(y) <= 0.34)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, num_frames: int = SEGMENTS) -> np.ndarray:
    """The scene as uint8 RGB frames [num_frames, FRAME_SIZE, FRAME_SIZE, 3]."""
    noise = np.random.default_rng(scene.noise_seed)
    frames = np.full((num_frames, FRAME_SIZE, FRAME_SIZE, 3), BACKGROUND, dtype=np.int16)
    frames += noise.integers(-6, 7, size=frames.shape, dtype=np.int16)
    mask = shape_mask(scene.shape)
    colour = np.array(COLOURS[scene.colour], dtype=np.int16)
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        x0, y0 = (round(v) for v in box_at(scene.start, scene.direction, scene.travel, progress))
        region = frames[t, y0 : y0 + OBJECT_SIZE, x0 : x0 + OBJECT_SIZE]
        region[mask[: region.shape[0], : region.shape[1]]] = colour
        if t * SEGMENTS // num_frames == scene.dot_segment:
            x, y = scene.dot_xy
            frames[t, y : y + DOT_SIZE, x : x + DOT_SIZE] = COLOURS[scene.dot_colour]
    return np.clip(frames, 0, 255).astype(np.uint8)


def answers(scene: Scene) -> dict[str, str]:
    """The one-word answer of each question type."""
    return {
        "colour": scene.colour,
        "shape": scene.shape,
        "direction": scene.direction,
        "dot": scene.dot_colour,
    }


def questions(scene: Scene, seed: int, index: int = 0) -> list[QA]:
    """One question per type, each in a phrasing chosen by ``(seed, index)``."""
    rng = np.random.default_rng([seed, index, 1])
    truth = answers(scene)
    return [QA(str(rng.choice(PHRASINGS[qtype])), truth[qtype], qtype) for qtype in QUESTION_TYPES]


def normalise_answer(text: str) -> str:
    """The first word of ``text``, lower-cased, without punctuation."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return words[0] if words else ""


def answer_vocabulary() -> list[str]:
    """Every answer word, in a fixed order."""
    return [*COLOURS, *SHAPES, *DIRECTIONS]
