"""What ``drift`` measured: per stage, per layer, per video, per question.

``DriftResult.to_json`` is the report ``drift --json`` writes and the HTML
page is drawn from. Frame numbers are always the frame's index within its own
video, for every stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .drift import StageDrift, TokenDrift
from .drift_verdict import drift_verdict

STAGES = ("vision_features", "pooled_embeddings", "cross_kv", "logits")
# The stages computed per frame (logits are per answer token).
FRAME_STAGES = STAGES[:3]


@dataclass
class VideoDrift:
    """The error of one video's frames, stage by stage."""

    name: str
    frames: int
    ground_truth: bool
    stages: dict[str, StageDrift] = field(
        default_factory=lambda: {s: StageDrift() for s in FRAME_STAGES}
    )

    def to_json(self) -> dict:
        return {
            "video": self.name,
            "frames": self.frames,
            "ground_truth": self.ground_truth,
            "rel_l2_per_frame": {n: s.rel_l2_per_frame for n, s in self.stages.items()},
        }


@dataclass(frozen=True)
class AnswerPair:
    """Both sides' greedy answers to one question (``truth`` None: no ground truth)."""

    video: int  # index into DriftResult.per_video
    question: str
    qtype: str | None
    truth: str | None
    ref: str
    test: str
    same: bool  # the same token ids


@dataclass
class DriftResult:
    """Everything ``drift --json`` reports; ``budget`` None: the default budget."""

    ref: str
    test: str
    budget: float | None = None
    stages: dict[str, StageDrift] = field(default_factory=lambda: {s: StageDrift() for s in STAGES})
    prefix_layers: dict[int, StageDrift] = field(default_factory=dict)
    cross_layers: dict[str, StageDrift] = field(default_factory=dict)
    tokens: TokenDrift = field(default_factory=TokenDrift)
    per_video: list[VideoDrift] = field(default_factory=list)
    answers: list[AnswerPair] = field(default_factory=list)
    hits: dict[str, dict[str, list[int]]] = field(default_factory=lambda: {"ref": {}, "test": {}})
    # PNG of a frame of each video with a changed answer (the HTML page shows it).
    thumbnails: dict[int, bytes] = field(default_factory=dict)

    @property
    def videos(self) -> int:
        return len(self.per_video)

    @property
    def questions(self) -> int:
        return len(self.answers)

    def score(self, side: str, qtype: str, right: bool) -> None:
        counts = self.hits[side].setdefault(qtype, [0, 0])
        counts[0] += right
        counts[1] += 1

    def _verdict(self, accuracy: dict[str, dict[str, float]]) -> dict:
        no_truth = [a for a in self.answers if a.truth is None]
        return drift_verdict(
            accuracy,
            len(self.answers) - len(no_truth),
            len(no_truth),
            sum(not a.same for a in no_truth),
            self.budget,
        )

    def to_json(self) -> dict:
        accuracy = {
            side: {q: h / n for q, (h, n) in sorted(types.items())}
            for side, types in self.hits.items()
        }
        accuracy = accuracy if any(self.hits.values()) else {}
        exact = sum(a.same for a in self.answers)
        return {
            "ref": self.ref,
            "test": self.test,
            "videos": self.videos,
            "questions": self.questions,
            "ground_truth_questions": sum(a.truth is not None for a in self.answers),
            "verdict": self._verdict(accuracy),
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
            "per_layer": {
                "prefix_kv_rel_l2": {str(i): s.rel_l2 for i, s in self.prefix_layers.items()},
                "cross_kv_rel_l2": {n: s.rel_l2 for n, s in self.cross_layers.items()},
            },
            "per_video": [video.to_json() for video in self.per_video],
            "end_to_end": {
                "kl_mean": self.tokens.kl_mean,
                "top1_agreement": self.tokens.top1_agreement,
                "greedy_exact_match": exact / self.questions if self.questions else 1.0,
                "accuracy": accuracy,
            },
            "changed_answers": [_changed(a) for a in self.answers if not a.same],
        }


def _changed(answer: AnswerPair) -> dict:
    """A changed answer as JSON (video, question, qtype, truth, ref, test)."""
    fields = asdict(answer)
    del fields["same"]  # always False here
    return fields
