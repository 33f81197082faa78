"""Check a safetensors file's header before any tensor is read (torch-free).

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
and the data. Loading trusts the header's shapes and offsets, so they are
checked here first: a bounded header, known dtypes, shapes whose byte count
equals the offsets' span, and spans that tile the data section exactly,
so no tensor can claim more bytes than the file holds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..runtime.errors import UserError
from ..runtime.model.limits import is_count
from ..runtime.package.files import open_regular

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_FILE_BYTES = 1 << 40
MAX_RANK = 8
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def _tensor_span(name: str, info: object) -> tuple[int, int]:
    """A tensor record's [begin, end), checked against its dtype and shape."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r}: record must hold dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise ValueError(f"tensor {name!r}: shape {shape!r}")
    count = 1
    for dim in shape:
        if not is_count(dim, 0, MAX_FILE_BYTES):
            raise ValueError(f"tensor {name!r}: dim {dim!r}")
        count *= dim
    if not (isinstance(offsets, list) and len(offsets) == 2):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r}")
    begin, end = offsets
    if not (is_count(begin, 0, MAX_FILE_BYTES) and is_count(end, begin, MAX_FILE_BYTES)):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r}")
    if end - begin != count * DTYPE_BYTES[dtype]:
        raise ValueError(f"tensor {name!r}: shape {shape} {dtype} needs {count} elements")
    return begin, end


def parse_header(raw: bytes, data_bytes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) of a header whose data section has ``data_bytes``.

    Raises ``ValueError`` naming the first problem.
    """
    header = json.loads(raw.decode("utf-8"), parse_constant=_refuse)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("__metadata__ must map strings to strings")
    spans = sorted((_tensor_span(name, info), name) for name, info in header.items())
    position = 0
    for (begin, end), name in spans:
        if begin != position:
            raise ValueError(f"tensor {name!r} does not start where the previous one ends")
        position = end
    if position != data_bytes:
        raise ValueError(f"tensors cover {position} of the {data_bytes} data bytes")
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items()}


def _refuse(name: str) -> None:
    raise ValueError(f"{name} in header")


def check_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check ``path``'s header (see module doc); tensor name -> (dtype, shape)."""
    with open_regular(path, MAX_FILE_BYTES, "safetensors file") as handle:
        size = path.stat().st_size
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise UserError(f"{path}: unreadable safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise UserError(f"{path}: unreadable safetensors file (header of {length} bytes)")
        raw = handle.read(length)
    try:
        return parse_header(raw, size - 8 - length)
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError) as exc:
        raise UserError(f"{path}: unreadable safetensors file ({exc})"[:300]) from None
