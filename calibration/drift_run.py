"""Run two packages (or two precisions of one) on the same videos and measure the drift.

Each side is a ``RuntimeAssistant`` whose vision and pooling sessions are
tapped, so the stages compared are exactly what the runtime computed. Per
video: vision features, pooled embeddings and cross K/V (INT8 memory is
dequantized with the scales its manifest records), the prefix KV cache per
decoder layer; per question: both sides' greedy answers (exact match, task
accuracy on synthetic videos) and, teacher-forced on the reference's answer,
the next-token distributions of both (KL, top-1 agreement, logits error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.errors import UserError
from ..runtime.model.contract import POOLING, VISION_ENCODER
from ..runtime.package.files import file_sha256
from ..runtime.package.manifest import PRECISIONS, load_manifest
from .drift import StageDrift, TokenDrift
from .record import RecordingSession

ANSWER_TOKENS = 4
STAGES = ("vision_features", "pooled_embeddings", "cross_kv", "logits")


@dataclass(frozen=True)
class DriftItem:
    """A video and its questions (with the true answer and type when known)."""

    path: Path
    questions: tuple[str, ...]
    answers: tuple[str | None, ...]
    types: tuple[str | None, ...]


def parse_side(text: str) -> tuple[Path, str | None]:
    """``PKG`` or ``PKG@precision``."""
    folder, _, precision = text.rpartition("@")
    if folder and precision in PRECISIONS:
        return Path(folder), precision
    return Path(text), None


def check_same_model(ref: Path, test: Path) -> None:
    """Refuse packages of different models (config or tokenizer differ)."""
    a, b = load_manifest(ref), load_manifest(test)
    if a.model_config != b.model_config:
        raise UserError(f"{ref} and {test} hold different models (their configs differ)")
    tok_a, tok_b = ref / "tokenizer.json", test / "tokenizer.json"
    if tok_a.is_file() and tok_b.is_file() and file_sha256(tok_a) != file_sha256(tok_b):
        raise UserError(f"{ref} and {test} hold different models (their tokenizers differ)")


class Side:
    """One side of the comparison: an assistant and the stage outputs it last computed."""

    def __init__(self, spec: str) -> None:
        from ..runtime.chat.assistant import RuntimeAssistant

        folder, precision = parse_side(spec)
        self.assistant = RuntimeAssistant(folder, provider="cpu", precision=precision)
        self.label = f"{folder}@{self.assistant.pipeline.artifacts.precision}"
        pooling = self.assistant.pipeline.artifacts.by_role[POOLING]
        self.scales = {
            k: np.asarray(v) for k, v in pooling.build.get("cross_kv_scales", {}).items()
        }
        self.features: list[np.ndarray] = []
        self.pooled: list[dict[str, np.ndarray]] = []
        sessions = self.assistant.pipeline.sessions
        sessions[VISION_ENCODER] = RecordingSession(
            sessions[VISION_ENCODER], lambda out: self.features.append(out["patch_features"])
        )
        sessions[POOLING] = RecordingSession(
            sessions[POOLING], lambda out: self.pooled.append(dict(out))
        )

    def cross(self, name: str) -> np.ndarray:
        """Cross K/V ``name`` of the last video, as float (INT8 memory dequantized)."""
        value = np.concatenate([p[name] for p in self.pooled], axis=1)
        if value.dtype == np.int8:
            return value.astype(np.float32) * self.scales[name][None, None, :, None]
        return value

    def set_video(self, pixels: np.ndarray) -> None:
        self.features.clear()  # in place: the taps hold these lists
        self.pooled.clear()
        self.assistant.set_frames_from_chunks([pixels], None)

    def forced_logits(self, question: str, tokens: list[int]) -> np.ndarray:
        """Next-token logits [len(tokens), V] with ``tokens`` fed as the answer."""
        a = self.assistant
        a.reset()
        prompt = a.prompt.first_question_ids(question, a.system)
        sampler = ForcedSampler(tokens)
        for _ in a.pipeline.generate(a.cache, a.text_cross, prompt, sampler, len(tokens), []):
            pass
        return np.stack(sampler.logits)


class ForcedSampler:
    """A ``Sampler`` stand-in that returns given tokens and keeps the logits it saw."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)
        self.logits: list[np.ndarray] = []

    def choose(self, logits: np.ndarray, *_: object) -> tuple[int, float]:
        self.logits.append(np.array(logits, dtype=np.float32))
        return self.tokens[len(self.logits) - 1], 0.0


@dataclass
class DriftResult:
    """Everything ``drift --json`` reports."""

    ref: str
    test: str
    stages: dict[str, StageDrift] = field(default_factory=lambda: {s: StageDrift() for s in STAGES})
    prefix_layers: dict[int, StageDrift] = field(default_factory=dict)
    cross_layers: dict[str, StageDrift] = field(default_factory=dict)
    tokens: TokenDrift = field(default_factory=TokenDrift)
    exact: int = 0
    questions: int = 0
    videos: int = 0
    hits: dict[str, dict[str, list[int]]] = field(default_factory=lambda: {"ref": {}, "test": {}})

    def score(self, side: str, qtype: str, right: bool) -> None:
        counts = self.hits[side].setdefault(qtype, [0, 0])
        counts[0] += right
        counts[1] += 1

    def to_json(self) -> dict:
        accuracy = {
            side: {q: h / n for q, (h, n) in sorted(types.items())}
            for side, types in self.hits.items()
        }
        return {
            "ref": self.ref,
            "test": self.test,
            "videos": self.videos,
            "questions": self.questions,
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
            "per_layer": {
                "prefix_kv_rel_l2": {str(i): s.rel_l2 for i, s in self.prefix_layers.items()},
                "cross_kv_rel_l2": {n: s.rel_l2 for n, s in self.cross_layers.items()},
            },
            "end_to_end": {
                "kl_mean": self.tokens.kl_mean,
                "top1_agreement": self.tokens.top1_agreement,
                "greedy_exact_match": self.exact / self.questions if self.questions else 1.0,
                "accuracy": accuracy if any(self.hits.values()) else {},
            },
        }


def _compare_video(ref: Side, test: Side, result: DriftResult) -> None:
    dims = ref.assistant.dims
    n, p = dims.patches_per_frame, dims.tokens_per_frame
    result.stages["vision_features"].add(
        np.concatenate(ref.features), np.concatenate(test.features), n
    )
    result.stages["pooled_embeddings"].add(
        np.concatenate([x["visual_embeds"] for x in ref.pooled], axis=1),
        np.concatenate([x["visual_embeds"] for x in test.pooled], axis=1),
        p,
    )
    for name in ref.pooled[0]:
        if name == "visual_embeds":
            continue
        a, b = ref.cross(name), test.cross(name)
        result.stages["cross_kv"].add(a, b, n)
        result.cross_layers.setdefault(name, StageDrift()).add(a, b)
    keys_a, values_a = ref.assistant.cache.prefix_arrays()
    keys_b, values_b = test.assistant.cache.prefix_arrays()
    for layer, arrays in enumerate(zip(keys_a, values_a, keys_b, values_b, strict=True)):
        stage = result.prefix_layers.setdefault(layer, StageDrift())
        stage.add(arrays[0], arrays[2])
        stage.add(arrays[1], arrays[3])


def _compare_question(ref: Side, test: Side, item: DriftItem, index: int, result) -> None:
    from ..runtime.chat.assistant_types import GenerationOptions
    from .synthetic_world import normalise_answer

    options = GenerationOptions(max_new_tokens=ANSWER_TOKENS)
    question = item.questions[index]
    answers = [side.assistant.ask(question, options) for side in (ref, test)]
    result.questions += 1
    result.exact += answers[0].token_ids == answers[1].token_ids
    truth, qtype = item.answers[index], item.types[index]
    if truth is not None:
        for name, answer in zip(("ref", "test"), answers, strict=True):
            result.score(name, qtype, normalise_answer(answer.answer) == truth)
    tokens = answers[0].token_ids
    logits = [side.forced_logits(question, tokens) for side in (ref, test)]
    result.tokens.add(*logits)
    result.stages["logits"].add(*logits)


def run_drift(
    ref_spec: str,
    test_spec: str,
    items: list[DriftItem],
    progress: Callable[[], None] = lambda: None,
    warn: Callable[[str], None] = print,
) -> DriftResult:
    """Compare ``test_spec`` with ``ref_spec`` on every item's video and questions."""
    from ..runtime.video.decode import load_video

    check_same_model(parse_side(ref_spec)[0], parse_side(test_spec)[0])
    ref, test = Side(ref_spec), Side(test_spec)
    result = DriftResult(ref.label, test.label)
    dims = ref.assistant.dims
    for item in items:
        try:
            pixels = load_video(item.path, dims.num_frames, dims.image_size)
        except UserError as exc:
            warn(f"warning: skipping video {item.path}: {exc}")
            progress()
            continue
        ref.set_video(pixels)
        test.set_video(pixels)
        _compare_video(ref, test, result)
        for index in range(len(item.questions)):
            _compare_question(ref, test, item, index, result)
        result.videos += 1
        progress()
    if not result.videos:
        raise UserError("no usable video to compare on")
    return result
