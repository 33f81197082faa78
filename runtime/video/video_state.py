"""The video state: everything the LLM needs of one video, computed once.

It holds the visual embeddings that enter the sequence, the cross K/V of
every DCAL (T2V always; V2V only with ``v2v_scope="frame"``, where it lets a
rolling window re-prefill without re-encoding), and optionally the KV cache
of the video prefix. Frames are encoded chunk by chunk, so memory is bounded
by the chunk, not by the video length.

A state saved to disk is keyed by the video's sha256, the frame-sampling
settings and the package's manifest hash; loading it for anything else is
refused. The file is a plain ``.npz``, parsed defensively
(``runtime/video/state_file.py``, ``runtime/video/state_arrays.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..backends.base import GraphSession
from ..errors import UserError
from ..model.limits import check_allocation
from ..package.files import open_regular, write_atomic
from .state_arrays import state_parts
from .state_file import (
    HARD_MAX_BYTES,
    BadStateError,
    StateSpec,
    parse_meta,
    read_members,
)

STATE_FORMAT = 2
SAMPLING_RULE = "segment-centres"  # spec section 2: frame i = floor((i + 0.5) n / T)
DEFAULT_CHUNK_FRAMES = 8


def frame_chunks(pixels: np.ndarray, chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> list[np.ndarray]:
    """Preprocessed frames [T, 3, S, S] as the encoder sees them in use: chunks of at
    most ``chunk_frames`` (one call over every frame would hold all their activations)."""
    return [pixels[i : i + chunk_frames] for i in range(0, len(pixels), chunk_frames)]


@dataclass(frozen=True)
class StateKey:
    """What a video state is valid for."""

    video_sha256: str
    num_frames: int  # frames requested (T)
    image_size: int
    artifacts: str  # backend/precision of the artifacts that computed it
    artifacts_sha256: str  # of exactly those files (package.ArtifactSet.sha256)
    sampling: str = SAMPLING_RULE

    def mismatch(self, other: StateKey) -> list[str]:
        """What differs between this key and ``other`` (the current run's), in words."""
        mine, theirs = asdict(self), asdict(other)
        if self.artifacts != other.artifacts:
            return [
                f"precision: it was made with {self.artifacts}, this run uses {other.artifacts}"
            ]
        fields = [name for name in mine if mine[name] != theirs[name]]
        return [
            "the artifact files differ" if n == "artifacts_sha256" else f"{n} differs"
            for n in fields
        ]


@dataclass
class VideoState:
    """Visual embeddings [1, F·P, D], cross K/V by graph input name, prefix cache."""

    key: StateKey | None  # None until saved: hashing the video costs a full read
    num_frames: int  # frames actually encoded (F)
    visual_embeds: np.ndarray
    cross: dict[str, np.ndarray]
    prefix_ids: list[int] = field(default_factory=list)
    prefix_keys: list[np.ndarray] | None = None  # per layer [1, prefix_len, kvh, hd]
    prefix_values: list[np.ndarray] | None = None

    @property
    def has_prefix(self) -> bool:
        return self.prefix_keys is not None

    def saved_prefix(self) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """The prefix cache it holds, (keys, values) per layer, or None."""
        if self.prefix_keys is None or self.prefix_values is None:
            return None
        return self.prefix_keys, self.prefix_values

    def t2v(self) -> dict[str, np.ndarray]:
        """The T2V K/V every text chunk reads."""
        return {name: value for name, value in self.cross.items() if name.startswith("t2v")}

    def v2v(self) -> dict[str, np.ndarray]:
        """The V2V K/V of all frames (empty once dropped, ``"video"`` scope)."""
        return {name: value for name, value in self.cross.items() if name.startswith("v2v")}


def encode_frames(
    vision: GraphSession, pooling: GraphSession, pixels: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Preprocessed frames [F, 3, S, S] -> visual embeds [1, F·P, D] and cross K/V."""
    features = vision.run({"pixel_values": pixels})["patch_features"]  # [F, N, Dv]
    outputs = pooling.run({"patch_features": features})
    embeds = outputs.pop("visual_embeds")
    return embeds, outputs


def encode_chunks(
    vision: GraphSession, pooling: GraphSession, chunks: Iterable[np.ndarray]
) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """Encode chunks of frames and join them along the token axis.

    Returns (frames, visual embeds [1, F·P, D], cross K/V [1, F·N, kvh, hd] by name).
    """
    frames, embeds = 0, []
    cross: dict[str, list[np.ndarray]] = {}
    for pixels in chunks:
        chunk_embeds, chunk_cross = encode_frames(vision, pooling, pixels)
        frames += pixels.shape[0]
        embeds.append(chunk_embeds)
        for name, value in chunk_cross.items():
            cross.setdefault(name, []).append(value)
    if not frames:
        raise UserError("the video gave no frames to encode")
    joined = {name: np.concatenate(parts, axis=1) for name, parts in cross.items()}
    return frames, np.concatenate(embeds, axis=1), joined


def append_to_state(
    state: VideoState, embeds: np.ndarray, cross: dict[str, np.ndarray], frames: int
) -> None:
    """Add newly encoded frames after the existing ones (pooling is frame-local)."""
    state.visual_embeds = np.concatenate([state.visual_embeds, embeds], axis=1)
    for name, value in cross.items():
        if name in state.cross:
            state.cross[name] = np.concatenate([state.cross[name], value], axis=1)
    state.num_frames += frames


def save_state(state: VideoState, path: str | os.PathLike) -> None:
    """Write ``state`` (with its prefix cache) to one .npz file, atomically."""
    prefix = state.saved_prefix()
    if prefix is None:
        raise ValueError("save_state needs the prefix cache")
    if state.key is None:
        raise ValueError("save_state needs the state's key")
    meta = {
        "format": STATE_FORMAT,
        "key": asdict(state.key),
        "num_frames": state.num_frames,
        "prefix_ids": state.prefix_ids,
        "cross_names": sorted(state.cross),
    }
    arrays = {"meta": np.array(json.dumps(meta)), "visual_embeds": state.visual_embeds}
    arrays.update({f"cross/{name}": value for name, value in state.cross.items()})
    for i, (k, v) in enumerate(zip(*prefix, strict=True)):
        arrays[f"prefix_key/{i}"], arrays[f"prefix_value/{i}"] = k, v
    # Numbers and one JSON string: nothing to pickle (the reader refuses object arrays).
    write_atomic(path, lambda handle: np.savez(handle, allow_pickle=False, **arrays))


def load_state(
    path: str | os.PathLike, expected: StateKey, spec: StateSpec | None = None
) -> VideoState:
    """Read a state file; refuse it unless it was made for ``expected``.

    With ``spec`` (the running package's sizes and dtypes) every array must
    have exactly the shape and dtype that package would have saved; without
    it only the file's own consistency is checked. See ``runtime/video/state_file.py``.
    """
    max_bytes = spec.max_bytes() if spec else HARD_MAX_BYTES
    with open_regular(path, max_bytes, "video state") as handle:
        check_allocation(os.fstat(handle.fileno()).st_size, f"video state {path}")
        try:
            arrays = read_members(handle, max_bytes)
            meta = parse_meta(arrays.pop("meta"))
            if meta.get("format") != STATE_FORMAT:
                raise UserError(
                    f"video state {path} was saved by another version of crosslmm-edge "
                    f"(state format {meta.get('format')!r}, this one reads {STATE_FORMAT}); "
                    "save it again"
                )
            key = _state_key(meta.get("key"))
            differs = key.mismatch(expected)
            if differs:
                raise UserError(
                    f"video state {path} does not fit this run ({'; '.join(differs)}); "
                    "refusing to use it"
                )
            return VideoState(key=key, **state_parts(meta, arrays, spec))
        except BadStateError as exc:
            raise UserError(
                f"{path} is not a video state saved by --save-video-state for this package ({exc})"
            ) from None


def _state_key(data: object) -> StateKey:
    """The key record, with exactly StateKey's fields and types."""
    types = {f.name: f.type for f in fields(StateKey)}
    if not isinstance(data, dict) or set(data) != set(types):
        raise BadStateError("key record has the wrong fields")
    for name, value in data.items():
        wanted = int if types[name] in (int, "int") else str
        if type(value) is not wanted or (isinstance(value, str) and len(value) > 256):
            raise BadStateError(f"key field {name} is not a {wanted.__name__}")
    return StateKey(**data)
