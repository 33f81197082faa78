"""A state file's metadata and arrays against each other and against the package.

``runtime/video/state_file.py`` made sure each member is a well-formed array;
here the pieces must agree: the frame count, the prefix token ids and the
cross-memory names in the metadata with the arrays present, and, given a
``StateSpec``, every shape and dtype with what the running package would
have saved (a prefix cache shorter or longer than its tokens is refused).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model.contract import cross_names
from ..model.limits import MAX_FRAMES, MAX_TOKEN_ID, is_count
from .state_file import BadStateError, StateSpec, check_finite


def _meta_fields(meta: dict[str, Any], spec: StateSpec | None) -> tuple[int, list[int], list[str]]:
    frames, ids, names = meta.get("num_frames"), meta.get("prefix_ids"), meta.get("cross_names")
    if not is_count(frames, 1, spec.max_frames if spec else MAX_FRAMES):
        raise BadStateError(f"num_frames {frames!r}")
    top = spec.dims.vocab_size - 1 if spec else MAX_TOKEN_ID
    if not isinstance(ids, list) or not all(is_count(i, 0, top) for i in ids):
        raise BadStateError("prefix_ids are not token ids of this model")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadStateError("cross_names is not a list of names")
    return frames, ids, names


def _layer_arrays(arrays: dict[str, np.ndarray], part: str) -> list[np.ndarray]:
    found = sorted(int(n.split("/")[1]) for n in arrays if n.startswith(f"{part}/"))
    if found != list(range(len(found))):
        raise BadStateError(f"{part} layers {found[:4]}... are not 0..n-1")
    return [arrays[f"{part}/{i}"] for i in found]


def _check_against_spec(parts: dict[str, Any], spec: StateSpec) -> None:
    d, frames = spec.dims, parts["num_frames"]
    kv = (d.num_kv_heads, d.head_dim)
    t2v = [n for n in cross_names(d.num_dcal) if n.startswith("t2v")]
    v2v = [n for n in cross_names(d.num_dcal) if n.startswith("v2v")]
    if set(parts["cross"]) not in (set(t2v), set(t2v + v2v)):
        raise BadStateError("its cross memory names are not this model's")
    length = len(parts["prefix_ids"]) + frames * d.tokens_per_frame
    if length >= spec.max_context or len(parts["prefix_keys"]) != d.num_layers:
        raise BadStateError(f"a prefix of {length} positions in {len(parts['prefix_keys'])} layers")
    expected = {
        "visual_embeds": ((1, frames * d.tokens_per_frame, d.hidden_size), parts["visual_embeds"])
    }
    for name, value in parts["cross"].items():
        expected[f"cross/{name}"] = ((1, frames * d.patches_per_frame, *kv), value)
    for i, (k, v) in enumerate(zip(parts["prefix_keys"], parts["prefix_values"], strict=True)):
        expected[f"prefix_key/{i}"] = ((1, length, *kv), k)
        expected[f"prefix_value/{i}"] = ((1, length, *kv), v)
    for name, (shape, array) in expected.items():
        if array.shape != shape or array.dtype != spec.dtype(name):
            raise BadStateError(
                f"{name} is {array.dtype.str} {list(array.shape)}, this package needs "
                f"{spec.dtype(name).str} {list(shape)}"
            )


def state_parts(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], spec: StateSpec | None
) -> dict[str, Any]:
    """``VideoState`` fields (all but the key) from checked metadata and arrays."""
    frames, ids, names = _meta_fields(meta, spec)
    present = {n.removeprefix("cross/") for n in arrays if n.startswith("cross/")}
    if set(names) != present or "visual_embeds" not in arrays:
        raise BadStateError("its arrays do not match its metadata")
    keys, values = _layer_arrays(arrays, "prefix_key"), _layer_arrays(arrays, "prefix_value")
    if len(keys) != len(values) or len({a.shape for a in keys + values}) > 1:
        raise BadStateError("prefix keys and values differ in count or shape")
    for name, array in arrays.items():
        check_finite(name, array)
    parts = {
        "num_frames": frames,
        "visual_embeds": arrays["visual_embeds"],
        "cross": {name: arrays[f"cross/{name}"] for name in names},
        "prefix_ids": ids,
        "prefix_keys": keys,
        "prefix_values": values,
    }
    if spec is not None:
        _check_against_spec(parts, spec)
    return parts
