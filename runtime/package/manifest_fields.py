"""Strict parsers for the fields of ``manifest.json`` (each raises ``ValueError``).

A manifest is trusted for file names, hashes and every size the runtime
allocates from, so each field is checked for its exact type and a sane
range here, before any dataclass holds it: a float where an int belongs, a
bool, a huge number, an absolute path or a name with ``..`` never gets past.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..model.contract import DimSpec, TensorSpec
from ..model.limits import MAX_CONTEXT, MAX_FRAMES, is_count, positive_float_problems
from .containment import name_problem

SHA256 = re.compile(r"^[0-9a-f]{64}$")
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8")
MAX_DIM = 1 << 32  # a static dim or a range bound: no tensor of ours comes near it
MAX_RANK = 8
MAX_SCALES = 1024  # per-KV-head scales: no model of ours has more heads
MAX_SPARE_ROWS = 1024  # query heads per KV head - 1: far fewer in any model
LIMIT_BOUNDS = {"max_frames": MAX_FRAMES, "max_context": MAX_CONTEXT}
EXPR = re.compile(r"^[a-z_]+(\s*[*/+]\s*([a-z_]+|\d+))*$")


@dataclass(frozen=True)
class FileRef:
    """A file of a package and the sha256 it must have."""

    file: str
    sha256: str


def as_dict(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    return value


def as_list(value: Any, what: str) -> list[Any]:
    """``value`` if it is a JSON array."""
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{what} {value!r} not in {allowed}")
    return value


def file_name(value: Any) -> str:
    """A package-relative file name (no ``..``, not absolute)."""
    problem = name_problem(value)
    if problem:
        raise ValueError(f"file name {value!r} {problem}")
    return value


def sha256_hex(value: Any) -> str:
    """A lower-case hex sha256."""
    if not isinstance(value, str) or not SHA256.match(value):
        raise ValueError(f"sha256 {value!r} is not 64 lower-case hex digits")
    return value


def file_ref(data: Any) -> FileRef:
    """``{"file": NAME, "sha256": HEX}``."""
    data = as_dict(data, "external_data entry")
    return FileRef(file_name(data["file"]), sha256_hex(data["sha256"]))


def tensor_spec(data: Any) -> TensorSpec:
    """``{"name", "dtype", "dims"}`` with int dims in [0, MAX_DIM] or dim names."""
    data = as_dict(data, "tensor")
    name = data["name"]
    if not isinstance(name, str) or not name or len(name) > 256:
        raise ValueError(f"tensor name {name!r}")
    dims = as_list(data["dims"], f"dims of {name}")
    if len(dims) > MAX_RANK:
        raise ValueError(f"tensor {name} has rank {len(dims)}")
    for dim in dims:
        if not (is_count(dim, 0, MAX_DIM) or (isinstance(dim, str) and dim.isidentifier())):
            raise ValueError(f"tensor {name} has dim {dim!r}")
    return TensorSpec(name, choice(data["dtype"], DTYPES, f"dtype of {name}"), tuple(dims))


def bind_scales(data: Any, inputs: tuple[TensorSpec, ...]) -> dict[str, tuple[float, ...]]:
    """``{INPUT: [scale per KV head]}``: float inputs the runtime feeds from int8 memory.

    Each name is one of ``inputs`` with a float dtype; each scale a finite
    positive number (what the pooling graph's ``QuantizeLinear`` divided by).
    """
    floats = {t.name for t in inputs if t.dtype in ("float32", "float16")}
    scales = {}
    for name, values in as_dict(data, "dequantize_on_bind").items():
        if name not in floats:
            raise ValueError(f"dequantize_on_bind names {name!r}, not a float input")
        values = as_list(values, f"dequantize_on_bind scales of {name}")
        numbered = {f"dequantize_on_bind {name}[{i}]": v for i, v in enumerate(values)}
        problems = positive_float_problems(numbered)
        if problems or not 0 < len(values) <= MAX_SCALES:
            raise ValueError(problems[0] if problems else f"dequantize_on_bind {name}: no scales")
        scales[name] = tuple(float(v) for v in values)
    return scales


def spare_rows(data: Any) -> int:
    """``kv_spare_rows``: a count of cache rows, at most ``MAX_SPARE_ROWS``."""
    if not is_count(data, 0, MAX_SPARE_ROWS):
        raise ValueError(f"kv_spare_rows {data!r}: not a count up to {MAX_SPARE_ROWS}")
    return int(data)


def dim_spec(name: str, data: Any) -> DimSpec:
    """A dynamic dim's ``{"min", "max", "expr"}`` with 0 <= min <= max <= MAX_DIM."""
    data = as_dict(data, f"dim {name}")
    low, high, expr = data["min"], data["max"], data.get("expr")
    if not (is_count(low, 0, MAX_DIM) and is_count(high, low, MAX_DIM)):
        raise ValueError(f"dim {name}: range [{low!r}, {high!r}]")
    if expr is not None and not (isinstance(expr, str) and EXPR.match(expr)):
        raise ValueError(f"dim {name}: expression {expr!r}")
    return DimSpec(name, low, high, expr)


def limits_dict(data: dict[str, Any]) -> dict[str, int]:
    """``{"max_frames", "max_context"}``, each an int in [1, its bound]."""
    if set(data) != set(LIMIT_BOUNDS):
        raise ValueError(f"limits must hold exactly {sorted(LIMIT_BOUNDS)}")
    for key, high in LIMIT_BOUNDS.items():
        if not is_count(data[key], 1, high):
            raise ValueError(f"limits.{key} {data[key]!r} not an integer in [1, {high}]")
    return dict(data)


def side_files(data: dict[str, Any]) -> dict[str, Any]:
    """The ``files`` record: config, generation config, tokenizer names and their sha256."""
    file_name(data["config"])
    if data.get("generation_config") is not None:
        file_name(data["generation_config"])
    for name in as_list(data.get("tokenizer", []), "tokenizer"):
        file_name(name)
    hashes = as_dict(data.get("sha256", {}), "files.sha256")
    for name, digest in hashes.items():
        file_name(name)
        sha256_hex(digest)
    return dict(data)


def side_file_names(files: dict[str, Any]) -> list[str]:
    """Every side file the ``files`` record names (config, generation config, tokenizer)."""
    names = [files["config"], *files.get("tokenizer", [])]
    if files.get("generation_config"):
        names.append(files["generation_config"])
    return list(dict.fromkeys(names))
