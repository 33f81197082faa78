"""``manifest.json``: the written contract of a model package (torch-free).

Schema (format_version 1)::

    {"format_version": 1,
     "source": {"checkpoint": PATH, "checkpoint_sha256": HEX},
     "model_config": {... the checkpoint's config.json ...},
     "limits": {"max_frames": T, "max_context": L},
     "precision": "fp32" | "fp16",
     "tools": {"torch": V, "onnx": V, "onnxruntime": V, "opset": 18, "exporter": ...},
     "files": {"config": "config.json", "generation_config": ..., "tokenizer": [...]},
     "graphs": {ROLE: {"inputs": [TENSOR], "outputs": [TENSOR],
                       "dims": {NAME: {"min": a, "max": b, "expr": null | "frames*4"}},
                       "artifacts": [ARTIFACT]}}}
    TENSOR   = {"name": ..., "dtype": "float32" | "float16" | "int64", "dims": [int | NAME]}
    ARTIFACT = {"backend": "onnx", "precision": "fp32", "file": "llm.onnx", "sha256": HEX,
                "external_data": [{"file": ..., "sha256": HEX}]}

Roles are ``vision_encoder``, ``pooling`` and ``llm``. A role holds a list of
artifacts so that later tools add an INT8 ONNX graph or a TensorRT engine of
the same role (same inputs and outputs) without changing this schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslmm_edge.runtime.errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_ROLES = ("vision_encoder", "pooling", "llm")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    dims: tuple[int | str, ...]


@dataclass(frozen=True)
class DimRange:
    min: int
    max: int
    expr: str | None = None  # a derived dim, e.g. "frames*4"


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str


@dataclass(frozen=True)
class Artifact:
    """One file implementing a graph role on one backend at one precision."""

    backend: str  # "onnx" now; "tensorrt" for engines later
    precision: str  # "fp32", "fp16", "int8"
    file: str
    sha256: str
    external_data: tuple[FileRef, ...] = ()


@dataclass(frozen=True)
class GraphEntry:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    dims: dict[str, DimRange]
    artifacts: tuple[Artifact, ...]

    def artifact(self, backend: str = "onnx", precision: str | None = None) -> Artifact:
        """The first artifact for ``backend`` (and ``precision`` when given)."""
        for item in self.artifacts:
            if item.backend == backend and precision in (None, item.precision):
                return item
        raise UserError(f"no {backend} artifact at precision {precision or 'any'} in the manifest")


@dataclass(frozen=True)
class Manifest:
    format_version: int
    source: dict[str, str]
    model_config: dict[str, Any]
    limits: dict[str, int]
    precision: str
    tools: dict[str, Any]
    files: dict[str, Any]
    graphs: dict[str, GraphEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor(data: dict[str, Any]) -> TensorInfo:
    return TensorInfo(str(data["name"]), str(data["dtype"]), tuple(data["dims"]))


def _artifact(data: dict[str, Any]) -> Artifact:
    extra = tuple(FileRef(str(e["file"]), str(e["sha256"])) for e in data.get("external_data", ()))
    return Artifact(
        str(data["backend"]), str(data["precision"]), str(data["file"]), str(data["sha256"]), extra
    )


def _graph(data: dict[str, Any]) -> GraphEntry:
    dims = {
        name: DimRange(int(d["min"]), int(d["max"]), d.get("expr"))
        for name, d in data["dims"].items()
    }
    return GraphEntry(
        tuple(_tensor(t) for t in data["inputs"]),
        tuple(_tensor(t) for t in data["outputs"]),
        dims,
        tuple(_artifact(a) for a in data["artifacts"]),
    )


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    """Build a ``Manifest``; raises KeyError/TypeError/ValueError on a bad shape."""
    return Manifest(
        format_version=int(data["format_version"]),
        source=dict(data["source"]),
        model_config=dict(data["model_config"]),
        limits={k: int(v) for k, v in data["limits"].items()},
        precision=str(data["precision"]),
        tools=dict(data["tools"]),
        files=dict(data["files"]),
        graphs={role: _graph(g) for role, g in data["graphs"].items()},
    )


def _check_files(pkg: Path, manifest: Manifest, verify_hashes: bool) -> None:
    for role, graph in manifest.graphs.items():
        for art in graph.artifacts:
            for ref in (FileRef(art.file, art.sha256), *art.external_data):
                path = pkg / ref.file
                if not path.is_file():
                    raise UserError(
                        f"{path}: file of graph {role!r} listed in the manifest is missing"
                    )
                if verify_hashes and file_sha256(path) != ref.sha256:
                    raise UserError(
                        f"{path}: sha256 differs from the manifest (file changed or corrupt)"
                    )


def load_manifest(pkg_dir: str | Path, verify_hashes: bool = False) -> Manifest:
    """Read and validate ``PKG/manifest.json``; ``UserError`` names what is wrong.

    Checks the format version, that every graph role is present and that each
    artifact file exists (and, with ``verify_hashes``, matches its sha256).
    """
    pkg = Path(pkg_dir)
    path = pkg / MANIFEST_NAME
    if not pkg.is_dir():
        raise UserError(f"{pkg}: package folder not found")
    if not path.is_file():
        raise UserError(
            f"{path}: not found; is {pkg} a model package (made by `crosslmm-edge export`)?"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise UserError(
            f"{path}: format_version {version!r} unsupported (this runtime reads {FORMAT_VERSION})"
        )
    try:
        manifest = manifest_from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    missing = [role for role in REQUIRED_ROLES if role not in manifest.graphs]
    if missing:
        raise UserError(f"{path}: graphs {missing} missing")
    _check_files(pkg, manifest, verify_hashes)
    return manifest
