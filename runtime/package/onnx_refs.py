"""The files an ONNX graph names, read from its protobuf without loading any data.

An initializer (or a Constant's tensor, a sparse tensor, a tensor in a
subgraph or function) can keep its bytes in an external file whose
``location`` is written inside the ``.onnx`` file. ONNX Runtime opens that
file on its own, so the runtime must know every such name before the graph
is loaded. This reader walks the protobuf wire format over a memory map,
descending only into the message fields that can hold tensors and skipping
every payload (raw_data of a 1 GiB graph is never touched). It needs neither
the ``onnx`` package nor a full parse.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from ..errors import UserError

# Message kinds and, per kind, the field numbers that hold sub-messages (onnx.proto).
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, FUNCTION, TRAINING, ENTRY = range(9)
CHILDREN = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},
    TRAINING: {1: GRAPH, 2: GRAPH},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    FUNCTION: {7: NODE, 11: ATTRIBUTE},
    SPARSE: {1: TENSOR, 2: TENSOR},
    TENSOR: {13: ENTRY},
    ENTRY: {},
}
TENSOR_DATA_LOCATION, EXTERNAL = 14, 1
MAX_DEPTH = 64  # subgraphs nest; a deeper file is not one the exporter wrote


class _MalformedError(Exception):
    pass


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _MalformedError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int):
    """Yield (field number, wire type, value or (payload start, payload end))."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _MalformedError("field runs past its message")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _MalformedError("truncated fixed-size field")
        else:
            raise _MalformedError(f"unsupported wire type {wire}")


def _entry(data: memoryview, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, span in _fields(data, start, end):
        if wire == 2 and number in (1, 2):
            text = bytes(data[span[0] : span[1]]).decode("utf-8", "replace")
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def _walk(data: memoryview, kind: int, start: int, end: int, depth: int, found: set[str]) -> None:
    if depth > MAX_DEPTH:
        raise _MalformedError("nesting too deep")
    external = False
    locations = []
    for number, wire, value in _fields(data, start, end):
        child = CHILDREN[kind].get(number)
        if kind == TENSOR and number == TENSOR_DATA_LOCATION and wire == 0:
            external = value == EXTERNAL
        elif child == ENTRY and wire == 2:
            key, text = _entry(data, *value)
            if key == "location":
                locations.append(text)
        elif child is not None and wire == 2:
            _walk(data, child, value[0], value[1], depth + 1, found)
    if kind == TENSOR and (external or locations):
        if not locations:
            raise _MalformedError("an external tensor names no location")
        found.update(locations)


def external_data_locations(path: str | Path) -> set[str]:
    """Every external-data ``location`` written in the ONNX file ``path``.

    Raises ``UserError`` when the file is not a well-formed protobuf.
    """
    path = Path(path)
    found: set[str] = set()
    try:
        with open(path, "rb") as handle:
            size = path.stat().st_size
            if size == 0:
                raise _MalformedError("empty file")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    _walk(view, MODEL, 0, size, 0, found)
                finally:
                    view.release()
    except _MalformedError as exc:
        raise UserError(f"{path}: not a well-formed ONNX file ({exc})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read graph {path}: {exc}") from None
    return found
