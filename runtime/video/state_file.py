"""Reading a video-state ``.npz`` defensively: nothing in it is trusted.

A state file is copied around by hand and may be empty, cut, a FIFO, a zip
bomb, or hold arrays of another dtype, byte order or shape. Before any array
is read: the path must be a regular file of bounded size; the zip must hold
only the member names a saved state has, each stored uncompressed (what
``np.savez`` writes) and of bounded size; each ``.npy`` header must give a
little-endian numeric dtype, C order and a shape whose byte count fits the
member. ``StateSpec`` then pins every shape and dtype to what the running
package expects, and float contents must be finite.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..model.contract import ModelDims

MEMBER = re.compile(
    r"^(meta|visual_embeds|cross/[tv]2v_(key|value)\.\d+|prefix_(key|value)/\d+)\.npy$"
)
MAX_META_BYTES = 1 << 20
MAX_HEADER_BYTES = 4096
HARD_MAX_BYTES = 64 << 30  # without a spec: no state of ours is this large
NUMERIC = ("f", "i", "u")


class BadStateError(Exception):
    """The file is not a well-formed state; the message says why."""


@dataclass(frozen=True)
class StateSpec:
    """What the running package expects of a state: sizes, limits, dtypes by graph input."""

    dims: ModelDims
    dtypes: Mapping[str, str]  # LLM input name -> dtype (visual_embeds, t2v_key.0, past_key.0)
    max_frames: int
    max_context: int

    def max_bytes(self) -> int:
        """The largest file a state of this package can be (plus room for meta and zip)."""
        d = self.dims
        item = max(np.dtype(t).itemsize for t in self.dtypes.values())
        kv = d.num_kv_heads * d.head_dim
        visual = self.max_frames * d.tokens_per_frame * d.hidden_size
        cross = 4 * d.num_dcal * self.max_frames * d.patches_per_frame * kv
        prefix = 2 * d.num_layers * self.max_context * kv
        return (visual + cross + prefix) * item + MAX_META_BYTES + (1 << 20)

    def dtype(self, name: str) -> np.dtype:
        """The exact dtype of array ``name`` (a state member name, without ``.npy``)."""
        if name.startswith("prefix_"):
            name = "past_key.0"
        return np.dtype(self.dtypes[name.removeprefix("cross/")]).newbyteorder("<")


def _header(handle: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """An ``.npy`` member's shape and dtype, refusing anything a state never holds."""
    try:
        version = np.lib.format.read_magic(handle)
        read = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = read(handle, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, KeyError, SyntaxError, TypeError, OverflowError) as exc:
        raise BadStateError(f"{name}: unreadable array header ({type(exc).__name__})") from None
    if fortran or dtype.hasobject or dtype.fields or dtype.subdtype:
        raise BadStateError(f"{name}: not a plain C-order array")
    if name != "meta" and (dtype.kind not in NUMERIC or dtype.byteorder == ">"):
        raise BadStateError(f"{name}: dtype {dtype.str} (need little-endian numbers)")
    return tuple(shape), dtype


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> np.ndarray:
    name = info.filename.removesuffix(".npy")
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > max_bytes:
        raise BadStateError(f"{name}: compressed or oversized member")
    with archive.open(info) as handle:
        shape, dtype = _header(handle, name)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=1) < 0 or count * dtype.itemsize > info.file_size:
            raise BadStateError(f"{name}: shape {shape} does not fit its {info.file_size} bytes")
        data = handle.read(count * dtype.itemsize)
        if handle.read(1):  # reading to the end also makes zipfile check the CRC-32
            raise BadStateError(f"{name}: bytes after the array")
    if len(data) != count * dtype.itemsize:
        raise BadStateError(f"{name}: truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def read_members(handle: BinaryIO, max_bytes: int) -> dict[str, np.ndarray]:
    """Every array of a state archive by member name (without ``.npy``), checked as above."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BadStateError(f"not a zip archive ({type(exc).__name__})") from None
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        bad = [n for n in names if not MEMBER.match(n)]
        if bad or len(set(names)) != len(names) or "meta.npy" not in names:
            raise BadStateError(f"unexpected members {sorted(bad)[:3] or 'or duplicates'}")
        if sum(info.file_size for info in infos) > max_bytes:
            raise BadStateError("members larger than any state of this package")
        try:
            return {
                info.filename.removesuffix(".npy"): _read_member(archive, info, max_bytes)
                for info in infos
            }
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise BadStateError(f"damaged archive ({type(exc).__name__})") from None


def parse_meta(array: np.ndarray) -> dict[str, Any]:
    """The JSON metadata member: a unicode scalar holding an object."""
    if array.shape != () or array.dtype.kind != "U" or array.dtype.itemsize > MAX_META_BYTES:
        raise BadStateError("meta is not a text scalar")
    try:
        meta = json.loads(str(array), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadStateError(f"meta is not JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise BadStateError("meta is not a JSON object")
    return meta


def _no_constant(name: str) -> None:
    raise ValueError(name)


def check_finite(name: str, array: np.ndarray) -> None:
    """Refuse NaN or infinity in a float array (they turn every answer into nothing)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadStateError(f"{name} holds NaN or infinite values")
