"""Calibration videos: which files, in which order, and the hash of the selection.

The selection depends only on the files' contents and the seed, never on the
order the user listed them in or on their names: files are identified by
their sha256, ranked by a seeded hash of it, and the first ``count`` taken.
The same set of videos therefore always calibrates to the same INT8 graphs.
When the user gives no video, scenes of the synthetic world are written
(``synth-video``), from a stream that neither training nor ``eval`` uses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import UserError
from ...runtime.package.files import file_sha256
from ..world import synthetic_world as world

# Synthetic calibration scenes: stream 0 trained the model, 1 is eval's held-out
# stream, 2 validated training; calibration uses 3 so no result is measured on it.
CALIBRATION_STREAM = 3


@dataclass(frozen=True)
class CalibVideo:
    """One calibration video and the questions asked about it."""

    path: Path
    sha256: str
    questions: tuple[str, ...]


def expand_paths(paths: list[str]) -> list[Path]:
    """Files given directly, and every non-hidden file inside given folders (recursively)."""
    if not paths:
        raise UserError("no calibration videos given (--calib VIDEO_OR_DIR ...)")
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"--calib {given}: no such file or folder")
    if not found:
        raise UserError(f"--calib {' '.join(paths)}: no files to calibrate on")
    return found


def generic_questions(key: int) -> tuple[str, ...]:
    """One question per type for a user's video (phrasing picked by ``key``)."""
    return tuple(world.PHRASINGS[q][key % len(world.PHRASINGS[q])] for q in world.QUESTION_TYPES)


def select_videos(paths: list[Path], count: int, seed: int) -> list[CalibVideo]:
    """Up to ``count`` distinct videos, chosen by a seeded hash of their content.

    Identical files count once. The result is the same for any order of ``paths``.
    """
    if count < 1:
        raise UserError(f"--calib-count must be at least 1, got {count}")
    by_hash = {file_sha256(p): p for p in sorted(paths, key=str)}
    ranked = sorted(by_hash, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    # Phrasings keyed by content too: a skipped or added file changes no other video's feeds.
    return [CalibVideo(by_hash[h], h, generic_questions(int(h[:8], 16))) for h in ranked[:count]]


def synthetic_videos(folder: Path, count: int, num_frames: int) -> list[CalibVideo]:
    """Write ``count`` scenes of the calibration stream; their own questions are asked."""
    from ..world.evaluate import write_scene_video

    videos = []
    for index in range(count):
        path = folder / f"calib-{index:04d}.mp4"
        qas = write_scene_video(path, CALIBRATION_STREAM, index, num_frames)
        videos.append(CalibVideo(path, file_sha256(path), tuple(qa.question for qa in qas)))
    return videos


def selection_hash(videos: list[CalibVideo], seed: int) -> str:
    """sha256 naming the calibration set: its videos' contents (in order), questions, seed."""
    digest = hashlib.sha256(f"seed:{seed}\n".encode())
    for video in videos:
        digest.update(f"{video.sha256}:{'|'.join(video.questions)}\n".encode())
    return digest.hexdigest()
