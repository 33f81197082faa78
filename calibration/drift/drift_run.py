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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...runtime.errors import UserError
from ...runtime.inference.kv_cache import KVCache
from ...runtime.inference.sampling import Sampler
from ...runtime.model.contract import POOLING, VISION_ENCODER
from ...runtime.package.files import file_sha256
from ...runtime.package.manifest import PRECISIONS, load_manifest
from ..collect.record import RecordingSession
from .drift import StageDrift
from .drift_result import AnswerPair, DriftResult, VideoDrift

ANSWER_TOKENS = 4


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
        from ...runtime.chat.assistant import RuntimeAssistant

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
        self.assistant.set_frames(pixels)

    def forced_logits(self, question: str, tokens: list[int]) -> np.ndarray:
        """Next-token logits [len(tokens), V] with ``tokens`` fed as the answer."""
        a = self.assistant
        a.reset()
        prompt = a.prompt.first_question_ids(question, a.system)
        sampler = ForcedSampler(tokens)
        for _ in a.pipeline.generate(self.cache, a.text_cross, prompt, sampler, len(tokens), []):
            pass
        return np.stack(sampler.logits)

    @property
    def cache(self) -> KVCache:
        """The KV cache of the video set last (``set_video`` fills it)."""
        cache = self.assistant.cache
        if cache is None:
            raise RuntimeError("set_video before reading the cache")
        return cache


class ForcedSampler(Sampler):
    """A ``Sampler`` that returns given tokens and keeps the logits it saw."""

    def __init__(self, tokens: list[int]) -> None:
        super().__init__()
        self.tokens = list(tokens)
        self.logits: list[np.ndarray] = []

    def choose(self, logits: np.ndarray, with_logprob: bool = True) -> tuple[int, float]:
        self.logits.append(np.array(logits, dtype=np.float32))
        return self.tokens[len(self.logits) - 1], 0.0


def _compare_video(ref: Side, test: Side, result: DriftResult, video: VideoDrift) -> None:
    """Add the vision, pooling, cross K/V and prefix KV errors of the video both sides hold."""
    pairs = {
        "vision_features": (np.concatenate(ref.features), np.concatenate(test.features)),
        "pooled_embeddings": tuple(
            np.concatenate([x["visual_embeds"] for x in side.pooled], axis=1)
            for side in (ref, test)
        ),
    }
    for name, (a, b) in pairs.items():
        result.stages[name].add(a, b, video.frames)
        video.stages[name].add(a, b, video.frames)
    for name in ref.pooled[0]:
        if name == "visual_embeds":
            continue
        a, b = ref.cross(name), test.cross(name)  # [1, T·N, heads, D]: frame-major
        result.stages["cross_kv"].add(a, b, video.frames)
        video.stages["cross_kv"].add(a, b, video.frames)
        result.cross_layers.setdefault(name, StageDrift()).add(a, b)
    keys_a, values_a = ref.cache.prefix_arrays()
    keys_b, values_b = test.cache.prefix_arrays()
    for layer, arrays in enumerate(zip(keys_a, values_a, keys_b, values_b, strict=True)):
        stage = result.prefix_layers.setdefault(layer, StageDrift())
        stage.add(arrays[0], arrays[2])
        stage.add(arrays[1], arrays[3])


def _compare_question(
    ref: Side, test: Side, item: DriftItem, index: int, result: DriftResult
) -> AnswerPair:
    """Ask both sides question ``index``; add its answers and next-token errors."""
    from ...runtime.chat.assistant_types import GenerationOptions
    from ..world.synthetic_world import normalise_answer

    options = GenerationOptions(max_new_tokens=ANSWER_TOKENS)
    question = item.questions[index]
    answers = [side.assistant.ask(question, options) for side in (ref, test)]
    truth, qtype = item.answers[index], item.types[index]
    if truth is not None and qtype is not None:
        for name, answer in zip(("ref", "test"), answers, strict=True):
            result.score(name, qtype, normalise_answer(answer.answer) == truth)
    tokens = answers[0].token_ids
    logits = [side.forced_logits(question, tokens) for side in (ref, test)]
    result.tokens.add(logits[0], logits[1])
    result.stages["logits"].add(logits[0], logits[1])
    pair = AnswerPair(
        result.videos - 1,
        question,
        qtype,
        truth,
        answers[0].answer,
        answers[1].answer,
        answers[0].token_ids == answers[1].token_ids,
    )
    result.answers.append(pair)
    return pair


def run_drift(
    ref_spec: str,
    test_spec: str,
    items: list[DriftItem],
    progress: Callable[[], None] = lambda: None,
    warn: Callable[[str], None] = print,
    budget: float | None = None,
) -> DriftResult:
    """Compare ``test_spec`` with ``ref_spec`` on every item's video and questions.

    ``budget``: the ``--max-drift`` points the verdict judges against (None: the default).
    """
    from ...runtime.video.decode import load_video
    from .drift_report import frame_thumbnail

    check_same_model(parse_side(ref_spec)[0], parse_side(test_spec)[0])
    ref, test = Side(ref_spec), Side(test_spec)
    result = DriftResult(ref.label, test.label, budget)
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
        video = VideoDrift(item.path.name, len(pixels), any(a is not None for a in item.answers))
        result.per_video.append(video)
        _compare_video(ref, test, result, video)
        pairs = [_compare_question(ref, test, item, i, result) for i in range(len(item.questions))]
        if not all(pair.same for pair in pairs):
            result.thumbnails[result.videos - 1] = frame_thumbnail(pixels)
        progress()
    if not result.videos:
        raise UserError("no usable video to compare on")
    return result
