"""Accuracy of any ``Assistant`` on videos of the synthetic world.

Each video is written to a real mp4 (``write_video``) and read back through
the assistant's own ``set_video``, so a checkpoint and an exported package are
measured on the same path a user's file takes. Decoding is greedy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...runtime.chat.assistant_types import Assistant, GenerationOptions
from ...runtime.errors import UserError
from . import synthetic_world as world

ANSWER_TOKENS = 4  # one-word answers; a few tokens leave room for a stop token


@dataclass
class EvalResult:
    """Accuracy over every question, and per question type."""

    accuracy: float
    per_type: dict[str, float]
    n_questions: int
    n_videos: int
    mistakes: list[dict] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        """The object ``eval --json`` prints."""
        return {
            "accuracy": self.accuracy,
            "per_type": self.per_type,
            "n_questions": self.n_questions,
            "n_videos": self.n_videos,
        }


def write_scene_video(path: Path, seed: int, index: int, num_frames: int) -> list[world.QA]:
    """Render scene ``(seed, index)`` to the mp4 ``path``; return its questions."""
    from ...runtime.video.decode import write_video

    scene = world.make_scene(seed, index)
    write_video(path, world.render(scene, num_frames))
    return world.questions(scene, seed, index)


def evaluate_assistant(
    assistant: Assistant,
    num_videos: int,
    seed: int,
    num_frames: int = world.SEGMENTS,
    on_video: Callable[[int], None] | None = None,
) -> EvalResult:
    """Ask every question of videos ``(seed, 0) … (seed, num_videos-1)``; score the answers."""
    if num_videos <= 0:
        raise UserError(f"number of synthetic videos must be positive, got {num_videos}")
    if num_frames <= 0:
        raise UserError(f"number of frames must be positive, got {num_frames}")
    options = GenerationOptions(max_new_tokens=ANSWER_TOKENS)
    hits = dict.fromkeys(world.QUESTION_TYPES, 0)
    counts = dict.fromkeys(world.QUESTION_TYPES, 0)
    mistakes = []
    with tempfile.TemporaryDirectory(prefix="crosslmm-eval-") as workdir:
        for index in range(num_videos):
            path = Path(workdir) / f"video-{index}.mp4"
            qas = write_scene_video(path, seed, index, num_frames)
            assistant.set_video(str(path))
            for qa in qas:
                said = world.normalise_answer(assistant.ask(qa.question, options).answer)
                counts[qa.qtype] += 1
                hits[qa.qtype] += said == qa.answer
                if said != qa.answer:
                    mistakes.append(
                        {
                            "index": index,
                            "question": qa.question,
                            "expected": qa.answer,
                            "answer": said,
                        }
                    )
            path.unlink()
            if on_video is not None:
                on_video(index)
    total = sum(counts.values())
    return EvalResult(
        accuracy=sum(hits.values()) / total,
        per_type={q: hits[q] / counts[q] for q in world.QUESTION_TYPES},
        n_questions=total,
        n_videos=num_videos,
        mistakes=mistakes,
    )
