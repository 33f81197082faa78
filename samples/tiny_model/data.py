"""Training data: synthetic videos round-tripped through mp4, with labels.

Training videos go (in part) through the project's own mp4 writer and
decoder, so the model sees the pixels that ``eval`` and the demo see when
they read mp4 files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from crosslmm_edge.calibration.world import synthetic_world as world
from crosslmm_edge.runtime.video.decode import read_frames, write_video
from tiny_model.tokenizer import CHAT_TEMPLATE, token_id

COLOURS = list(world.COLOURS)
CELLS = world.FRAME_SIZE // world.PATCH  # patch grid side (8)


def mp4_roundtrip(frames: np.ndarray, workdir: Path) -> np.ndarray:
    """Write uint8 frames [T, H, W, 3] as ``write_video`` does and decode them back."""
    path = workdir / "roundtrip.mp4"
    write_video(path, frames)
    return read_frames(path, list(range(len(frames))))


@dataclass
class VideoPool:
    """``count`` rendered videos and their per-video and per-frame labels."""

    frames: torch.Tensor  # [V, T, H, W, 3] uint8
    answers: dict[str, torch.Tensor]  # question type -> [V] answer-word index
    frame_x: torch.Tensor  # [V, T] patch column of the shape's centre
    frame_y: torch.Tensor  # [V, T] patch row of the shape's centre
    dot_patch: torch.Tensor  # [V, T] patch index showing the dot, -1 when none

    def __len__(self) -> int:
        return self.frames.shape[0]


def _frame_labels(scene: world.Scene, num_frames: int) -> tuple[list[int], list[int], list[int]]:
    xs, ys, dots = [], [], []
    centre = world.OBJECT_SIZE / 2
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        x0, y0 = world.box_at(scene.start, scene.direction, scene.travel, progress)
        xs.append(min(int((x0 + centre) // world.PATCH), CELLS - 1))
        ys.append(min(int((y0 + centre) // world.PATCH), CELLS - 1))
        shows = t * world.SEGMENTS // num_frames == scene.dot_segment
        x, y = scene.dot_xy
        dots.append((y // world.PATCH) * CELLS + x // world.PATCH if shows else -1)
    return xs, ys, dots


def build_pool(seed: int, count: int, num_frames: int, mp4_every: int = 1) -> VideoPool:
    """Render videos ``(seed, 0) … (seed, count-1)``.

    Every ``mp4_every``-th video is round-tripped through mp4 (0: none); the
    writer is near-lossless (about one grey level), and encoding all of them
    would dominate the training time on 2 cores.
    """
    frames, answers, xs, ys, dots = [], {q: [] for q in world.QUESTION_TYPES}, [], [], []
    with tempfile.TemporaryDirectory(prefix="tiny-pool-") as workdir:
        for index in range(count):
            scene = world.make_scene(seed, index)
            video = world.render(scene, num_frames)
            if mp4_every and index % mp4_every == 0:
                video = mp4_roundtrip(video, Path(workdir))
            frames.append(video)
            _add_labels(scene, num_frames, answers, xs, ys, dots)
    return VideoPool(
        frames=torch.from_numpy(np.stack(frames)),
        answers={q: torch.tensor(v) for q, v in answers.items()},
        frame_x=torch.tensor(xs),
        frame_y=torch.tensor(ys),
        dot_patch=torch.tensor(dots),
    )


def _add_labels(
    scene: world.Scene, num_frames: int, answers: dict, xs: list, ys: list, dots: list
) -> None:
    """Append the scene's answer indices and per-frame labels to the lists."""
    vocabulary = world.answer_vocabulary()
    for qtype, word in world.answers(scene).items():
        answers[qtype].append(vocabulary.index(word))
    x, y, d = _frame_labels(scene, num_frames)
    xs.append(x)
    ys.append(y)
    dots.append(d)


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> SigLIP-normalised float [..., 3, H, W]."""
    return (frames.float() / 255 - 0.5).div(0.5).movedim(-1, -3)


class PromptTokens:
    """Token ids of the video prefix and of every phrased question chunk."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        import jinja2

        template = jinja2.Environment().from_string(CHAT_TEMPLATE)
        self.im_end = token_id(tokenizer, "<|im_end|>")
        self.pad = token_id(tokenizer, "<|endoftext|>")
        self.answer_ids = [token_id(tokenizer, w) for w in world.answer_vocabulary()]
        self.prefix: list[int] = []
        self.questions: dict[str, list[list[int]]] = {}
        for qtype, phrasings in world.PHRASINGS.items():
            self.questions[qtype] = []
            for phrase in phrasings:
                text = template.render(
                    messages=[{"role": "user", "content": "<|video_pad|>\n" + phrase}],
                    add_generation_prompt=True,
                )
                head, tail = text.split("<|video_pad|>", 1)
                self.prefix = tokenizer.encode(head).ids
                self.questions[qtype].append(tokenizer.encode(tail).ids)

    def qa_batch(
        self, answers: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """Question chunks for every video and question type, with targets.

        answers: type -> [B] answer-word indices. Returns ids [B·Q, L] (video-major),
        the position of each answer [B·Q], answer token ids [B·Q], and the type of each row.
        """
        rows, spots, targets, types = [], [], [], []
        batch = next(iter(answers.values())).shape[0]
        for b in range(batch):
            for qtype, phrasings in self.questions.items():
                pick = int(torch.randint(len(phrasings), (1,), generator=generator))
                question = phrasings[pick]
                answer = self.answer_ids[int(answers[qtype][b])]
                rows.append([*question, answer, self.im_end])
                spots.append(len(question) - 1)
                targets.append(answer)
                types.append(qtype)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, torch.tensor(spots), torch.tensor(targets), types
