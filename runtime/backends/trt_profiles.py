"""TensorRT optimisation profiles, derived once from the manifest (torch-free).

An optimisation profile gives every dynamic input a min, opt and max shape;
TensorRT tunes its kernels for opt and accepts any shape between min and max.
Each of the three points must be a shape the graph can actually receive
(``seq_len = text_len + visual_len``; with ``v2v_scope="frame"``, ``v2v_len``
is the chunk's frames times N), otherwise TensorRT rejects the profile or
tunes for a chunk that never happens.

The LLM gets three profiles, tried in this order for each chunk:

- ``decode``: one text token, no visual part (tuned for decode);
- ``text``: a text-only chunk (a question, a later turn);
- ``visual``: a chunk with at least one frame of visual tokens (the video
  prefix, frames appended to a live stream). ``build`` caps it at the largest
  piece ``Pipeline.prefill`` sends (its score budget), so an engine reserves
  activation memory for one piece, not the whole video; ONNX Runtime's
  TensorRT provider, which sees only the dims, keeps the whole video.

The vision encoder and the pooling get one ``frames`` profile up to the
runtime's encoding chunk; both graphs are frame-local, so the TensorRT
session splits a longer call into chunks. ``trtexec``-style builders (``build``) and ONNX
Runtime's TensorRT execution provider (``trt_profile_options``) use the same
profiles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import UserError
from ..model.contract import DimSpec, TensorSpec

POINTS = ("min", "opt", "max")
ENCODE_CHUNK_FRAMES = 8  # runtime.video_state.DEFAULT_CHUNK_FRAMES: frames per encoder call
OPT_TEXT = 64  # tokens of a typical question: what the text profile is tuned for
OPT_PREFIX_TEXT = 32  # system prompt + user header before the visual tokens
# Caps on text per chunk. A profile's max point sizes the engine's activation
# memory, and T2V scores grow with text x memory (2 048 text tokens over 32 frames
# of SigLIP memory would need ~2 GB): questions and turns are far shorter.
TEXT_CHUNK_MAX = 512
PREFIX_TEXT_MAX = 256

Shape = tuple[int, ...]


@dataclass(frozen=True)
class FrameSizes:
    """Tokens per frame: ``pooled`` in the LLM sequence (P), ``memory`` in the cross K/V (N)."""

    pooled: int
    memory: int
    frame_scope: bool  # v2v_scope == "frame": v2v_len = visual_len / P * N


@dataclass(frozen=True)
class ProfileLimits:
    """The largest video and context an engine accepts (at most the package's)."""

    max_frames: int
    max_context: int


@dataclass(frozen=True)
class ShapeProfile:
    """One optimisation profile: (min, opt, max) shape of every input."""

    name: str
    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def violation(self, shapes: Mapping[str, Shape]) -> tuple[str, int, int] | None:
        """The first (input, axis, value) outside this profile, or None if all fit."""
        for name, shape in shapes.items():
            low, _, high = self.shapes[name]
            if len(shape) != len(low):
                return name, -1, len(shape)
            for axis, value in enumerate(shape):
                if not low[axis] <= value <= high[axis]:
                    return name, axis, value
        return None

    def to_dict(self) -> dict:
        """JSON form for the engine record: {name, inputs: {input: {min, opt, max}}}."""
        inputs = {
            name: {point: list(shape) for point, shape in zip(POINTS, triple, strict=True)}
            for name, triple in self.shapes.items()
        }
        return {"name": self.name, "inputs": inputs}

    @classmethod
    def from_dict(cls, data: Mapping) -> ShapeProfile:
        shapes = {
            name: tuple(tuple(int(d) for d in triple[p]) for p in POINTS)
            for name, triple in data["inputs"].items()
        }
        return cls(str(data["name"]), shapes)  # type: ignore[arg-type]


def frame_sizes_from_dims(dims: Mapping[str, DimSpec]) -> FrameSizes:
    """P and N from the manifest's dims alone (ONNX Runtime's provider sees only these).

    The pooling's dims say ``frames*P``; the LLM's ``v2v_len`` says
    ``visual_len/P*N`` in frame scope. In video scope the LLM's dims fix only
    N/P (no graph op depends on P there), so the reduced ratio is used.
    """
    if "pooled_tokens" in dims:
        return FrameSizes(_factor(dims["pooled_tokens"]), _factor(dims["memory_tokens"]), False)
    expr = dims["v2v_len"].expr if "v2v_len" in dims else None
    match = re.fullmatch(r"visual_len/(\d+)\*(\d+)", expr or "")
    if match:
        return FrameSizes(int(match.group(1)), int(match.group(2)), True)
    visual, memory = dims["visual_len"].max, dims["memory_len"].max
    common = math.gcd(visual, memory) or 1
    return FrameSizes(visual // common, memory // common, False)


def _factor(dim: DimSpec) -> int:
    match = re.fullmatch(r"frames\*(\d+)", dim.expr or "")
    return int(match.group(1)) if match else dim.min


def derive_profiles(
    inputs: Sequence[TensorSpec],
    dims: Mapping[str, DimSpec],
    limits: ProfileLimits | None = None,
    frame: FrameSizes | None = None,
    visual_piece: int | None = None,
) -> list[ShapeProfile]:
    """The profiles of one graph, from its inputs, the manifest's dims and the limits.

    ``limits`` default to the dims' maxima; asking for more than the package
    was exported for is refused. ``visual_piece`` caps the visual positions of
    one LLM run (``generation.largest_visual_piece``); None: the whole video.
    """
    if "text_len" in dims:
        frame = frame or frame_sizes_from_dims(dims)
        limits = _check_limits(limits, dims["visual_len"].max // frame.pooled, _context(dims))
        points = llm_points(limits, frame, visual_piece)
    else:
        context = limits.max_context if limits else 0  # no context in frame-only graphs
        limits = _check_limits(limits, dims["frames"].max, context)
        points = frame_points(limits)
    return [ShapeProfile(name, _shapes(inputs, sizes)) for name, sizes in points.items()]


def _context(dims: Mapping[str, DimSpec]) -> int:
    return dims["seq_len"].max


def _check_limits(limits: ProfileLimits | None, frames: int, context: int) -> ProfileLimits:
    if limits is None:
        return ProfileLimits(frames, context)
    if limits.max_frames > frames or limits.max_context > context:
        raise UserError(
            f"--max-frames {limits.max_frames} / --max-context {limits.max_context} exceed the "
            f"package's export limits ({frames} frames, {context} positions); re-export with "
            "larger limits"
        )
    if limits.max_frames < 1:
        raise UserError(f"--max-frames {limits.max_frames}: must be at least 1")
    return limits


def frame_points(limits: ProfileLimits) -> dict[str, dict[str, dict[str, int]]]:
    """The one ``frames`` profile of the vision encoder and the pooling."""
    frames = limits.max_frames
    top = min(ENCODE_CHUNK_FRAMES, frames)  # frame-local graphs: longer calls are split
    return {"frames": {p: {"frames": n} for p, n in zip(POINTS, (1, top, top), strict=True)}}


def llm_points(
    limits: ProfileLimits, frame: FrameSizes, visual_piece: int | None = None
) -> dict[str, dict[str, dict[str, int]]]:
    """Per LLM profile, the consistent min/opt/max points of every dim."""
    F, L, P, N = limits.max_frames, limits.max_context, frame.pooled, frame.memory
    # Frames in one visual run: the whole video, or the runtime's largest prefill piece.
    piece = F if visual_piece is None else max(1, min(F, visual_piece // P))
    if L <= P * F:
        raise UserError(
            f"--max-context {L} cannot hold {F} frames ({P * F} visual tokens) plus any text"
        )
    prefix_max = min(PREFIX_TEXT_MAX, L - P * F)
    prefix_text = min(OPT_PREFIX_TEXT, prefix_max)
    past_opt = min(L - 1, P * F + prefix_text)
    memory = (0, N * F, N * F)  # text chunks read all frames' T2V memory (none before a video)

    def point(text, visual, past, v2v, mem) -> dict[str, dict[str, int]]:
        return {
            p: {
                "text_len": text[i],
                "visual_len": visual[i],
                "seq_len": text[i] + visual[i],
                "past_len": past[i],
                "v2v_len": v2v[i],
                "memory_len": mem[i],
            }
            for i, p in enumerate(POINTS)
        }

    none = (0, 0, 0)
    text_opt = min(OPT_TEXT, L)
    # Visual chunks: V2V sees N per frame of the chunk (frame scope) or of the whole
    # video (video scope); one frame to all F frames of memory either way.
    video_memory = (N, N * F, N * F)
    v2v = (N, N * piece, N * piece) if frame.frame_scope else video_memory
    return {
        "decode": point((1, 1, 1), none, (0, past_opt, L - 1), none, memory),
        "text": point(
            (1, text_opt, min(TEXT_CHUNK_MAX, L)), none, (0, past_opt, L - 1), none, memory
        ),
        "visual": point(
            (0, prefix_text, prefix_max),
            (P, P * piece, P * piece),
            (0, 0, L - P),
            v2v,
            video_memory,
        ),
    }


def _shapes(
    inputs: Sequence[TensorSpec], sizes: Mapping[str, Mapping[str, int]]
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Every input's (min, opt, max) shape; ``sizes`` maps point -> dim -> size."""
    return {
        spec.name: tuple(spec.shape(dict(sizes[p])) for p in POINTS)  # type: ignore[misc]
        for spec in inputs
    }


def select_profile(profiles: Sequence[ShapeProfile], shapes: Mapping[str, Shape]) -> int:
    """Index of the first profile holding every input shape; ``UserError`` otherwise.

    The error names, for each profile, the first input, axis and value outside
    it and the profile's range there, so the user knows which limit to rebuild
    with (a visual chunk is refused by the decode profile for other reasons
    than by the visual one).
    """
    reasons = []
    for index, profile in enumerate(profiles):
        bad = profile.violation(shapes)
        if bad is None:
            return index
        name, axis, value = bad
        if axis < 0:
            raise UserError(f"input {name} has {value} dimensions; the engine expects another rank")
        low, _, high = profile.shapes[name]
        reasons.append(
            f"{profile.name}: {name} dimension {axis} is {value}, not in {low[axis]}..{high[axis]}"
        )
    raise UserError(
        f"no TensorRT profile of the engine takes this chunk ({'; '.join(reasons)}); rebuild "
        "the engines with larger --max-frames/--max-context"
    )


def trt_profile_options(
    inputs: Sequence[TensorSpec], dims: Mapping[str, DimSpec]
) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` for ONNX Runtime's TensorRT execution provider.

    Every profile of ``derive_profiles``; ONNX Runtime reads an input named
    again as the next profile.
    """
    profiles = derive_profiles(inputs, dims)
    options = {}
    for index, point in enumerate(POINTS):
        items = [
            f"{name}:" + "x".join(str(d) for d in triple[index])
            for profile in profiles
            for name, triple in profile.shapes.items()
        ]
        options[f"trt_profile_{point}_shapes"] = ",".join(items)
    return options
