"""``manifest.json``: the written contract of a model package (torch-free).

Schema (format_version 2)::

    {"format_version": 2,
     "source": {"checkpoint": PATH, "checkpoint_sha256": HEX},
     "model_config": {... the checkpoint's config.json ...},
     "limits": {"max_frames": T, "max_context": L},
     "files": {"config": "config.json", "generation_config": ..., "tokenizer": [...]},
     "graphs": {ROLE: {"dims": {NAME: {"min": a, "max": b, "expr": null | "frames*4"}},
                       "artifacts": [ARTIFACT, ...]}}}
    ARTIFACT = {"backend": "onnx" | "tensorrt", "precision": "fp32" | "fp16" | "int8" | "int4",
                "file": "llm.onnx", "sha256": HEX,
                "external_data": [{"file": ..., "sha256": HEX}],
                "inputs": [TENSOR], "outputs": [TENSOR],
                "build": {tool versions, recipe, engine record ...},
                "dequantize_on_bind": {INPUT: [scale per KV head]},   (optional)
                "kv_spare_rows": N}                                   (optional, LLM)
    TENSOR   = {"name": ..., "dtype": "float32" | "float16" | "int64" | ..., "dims": [int | NAME]}

Roles are ``vision_encoder``, ``pooling`` and ``llm``. Tensor names and dims
are the role's contract (``runtime/model/contract.py``); dtypes belong to each
artifact, so fp32, fp16 and INT8 graphs and TensorRT engines of one role sit
side by side, each telling exactly what it takes and returns.
``dequantize_on_bind`` names float LLM inputs (cross K/V) that the pooling
graph emits as int8: the runtime keeps that memory in int8 and dequantizes it
once per video, ``x * scale[kv_head]``, before it binds it.
``kv_spare_rows`` (a shared-cache LLM graph's): rows its head-major KV cache
needs beyond its capacity, which a decode step writes as scratch
(``export/graphs/ort_grouped_decode.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..model.contract import ROLES, DimSpec, TensorSpec
from .containment import inside
from .files import read_json
from .manifest_fields import (
    FileRef,
    as_dict,
    as_list,
    bind_scales,
    choice,
    dim_spec,
    file_name,
    file_ref,
    limits_dict,
    sha256_hex,
    side_file_names,
    side_files,
    spare_rows,
    tensor_spec,
)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
# onnx-trt: ONNX graphs meant for TensorRT's builder (fp16 with INT8 Q/DQ); ONNX Runtime
# does not run them (``choose_artifacts`` matches the backend, never picks them for onnx).
BACKENDS = ("onnx", "tensorrt", "onnx-trt")
PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class Artifact:
    """One file implementing a graph role on one backend at one precision."""

    backend: str
    precision: str
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[FileRef, ...] = ()
    build: dict[str, Any] = field(default_factory=dict)
    dequantize_on_bind: dict[str, tuple[float, ...]] = field(default_factory=dict)
    kv_spare_rows: int = 0

    @property
    def label(self) -> str:
        """``backend/precision``, as messages and ``--json`` name an artifact."""
        return f"{self.backend}/{self.precision}"

    def files(self) -> tuple[FileRef, ...]:
        """The main file and its external data, each with its sha256."""
        return (FileRef(self.file, self.sha256), *self.external_data)

    def held_dtypes(self) -> dict[str, str]:
        """Each input's dtype as the runtime holds it (int8 where it dequantizes on bind)."""
        return {
            t.name: "int8" if t.name in self.dequantize_on_bind else t.dtype for t in self.inputs
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "file": self.file,
            "sha256": self.sha256,
            "external_data": [{"file": r.file, "sha256": r.sha256} for r in self.external_data],
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "build": self.build,
            **(
                {"dequantize_on_bind": {k: list(v) for k, v in self.dequantize_on_bind.items()}}
                if self.dequantize_on_bind
                else {}
            ),
            **({"kv_spare_rows": self.kv_spare_rows} if self.kv_spare_rows else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        """Parse one artifact record; ``ValueError`` names the first bad field."""
        extra = tuple(file_ref(e) for e in as_list(data.get("external_data", []), "external_data"))
        inputs = tuple(tensor_spec(t) for t in as_list(data["inputs"], "inputs"))
        return cls(
            backend=choice(data["backend"], BACKENDS, "backend"),
            precision=choice(data["precision"], PRECISIONS, "precision"),
            file=file_name(data["file"]),
            sha256=sha256_hex(data["sha256"]),
            inputs=inputs,
            outputs=tuple(tensor_spec(t) for t in as_list(data["outputs"], "outputs")),
            external_data=extra,
            build=dict(data.get("build") or {}),
            dequantize_on_bind=bind_scales(data.get("dequantize_on_bind", {}), inputs),
            kv_spare_rows=spare_rows(data.get("kv_spare_rows", 0)),
        )


@dataclass(frozen=True)
class GraphEntry:
    """One role: its dynamic dims and every artifact that implements it."""

    dims: dict[str, DimSpec]
    artifacts: tuple[Artifact, ...]

    def find(self, backend: str, precision: str) -> Artifact | None:
        """The artifact for ``backend`` at ``precision``, if the package holds one."""
        return next(
            (a for a in self.artifacts if (a.backend, a.precision) == (backend, precision)), None
        )

    def to_dict(self) -> dict[str, Any]:
        dims = {d.name: {"min": d.min, "max": d.max, "expr": d.expr} for d in self.dims.values()}
        return {"dims": dims, "artifacts": [a.to_dict() for a in self.artifacts]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphEntry:
        dims = {
            str(name): dim_spec(str(name), d) for name, d in as_dict(data["dims"], "dims").items()
        }
        artifacts = as_list(data["artifacts"], "artifacts")
        parsed = tuple(Artifact.from_dict(as_dict(a, "artifact")) for a in artifacts)
        labels = [a.label for a in parsed]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two artifacts of one backend and precision: {sorted(labels)}")
        return cls(dims, parsed)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    source: dict[str, str]
    model_config: dict[str, Any]
    limits: dict[str, int]
    files: dict[str, Any]
    graphs: dict[str, GraphEntry]

    def labels(self) -> list[str]:
        """``backend/precision`` of every complete set (all roles present), sorted."""
        sets = [{a.label for a in g.artifacts} for g in self.graphs.values()]
        return sorted(set.intersection(*sets)) if sets else []

    def with_artifact(self, role: str, artifact: Artifact) -> Manifest:
        """A copy with ``artifact`` added to ``role`` (replacing one of the same label)."""
        entry = self.graphs[role]
        kept = tuple(a for a in entry.artifacts if a.label != artifact.label)
        graphs = {**self.graphs, role: replace(entry, artifacts=(*kept, artifact))}
        return replace(self, graphs=graphs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "source": self.source,
            "model_config": self.model_config,
            "limits": self.limits,
            "files": self.files,
            "graphs": {role: entry.to_dict() for role, entry in self.graphs.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    """Build a ``Manifest``; raises KeyError/TypeError/ValueError on a bad shape."""
    graphs = as_dict(data["graphs"], "graphs")
    unknown = sorted(set(graphs) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown graph roles {unknown} (expected {list(ROLES)})")
    return Manifest(
        format_version=int(data["format_version"]),
        source=dict(as_dict(data["source"], "source")),
        model_config=dict(as_dict(data["model_config"], "model_config")),
        limits=limits_dict(as_dict(data["limits"], "limits")),
        files=side_files(as_dict(data["files"], "files")),
        graphs={str(role): GraphEntry.from_dict(as_dict(g, role)) for role, g in graphs.items()},
    )


def _check_files(pkg: Path, manifest: Manifest) -> None:
    """Every file the manifest names is a regular file inside the package."""
    for role, graph in manifest.graphs.items():
        for artifact in graph.artifacts:
            for ref in artifact.files():
                inside(pkg, ref.file, f"file of graph {role!r} ({artifact.label}) in the manifest")
    for name in side_file_names(manifest.files):
        inside(pkg, name, "side file in the manifest")


def load_manifest(pkg_dir: str | Path) -> Manifest:
    """Read and validate ``PKG/manifest.json``; ``UserError`` names what is wrong.

    Checks the format version, every field's type and range
    (``manifest_fields``), that every graph role is present and that each file
    it names is a regular file inside the package, reached through no symbolic
    link. Hashes and the graphs' contract are checked by ``runtime.package``.
    """
    pkg = Path(pkg_dir)
    path = pkg / MANIFEST_NAME
    if not pkg.is_dir():
        raise UserError(f"{pkg}: package folder not found")
    if not path.is_file():
        raise UserError(
            f"{path}: not found; is {pkg} a model package (made by `crosslmm-edge export`)?"
        )
    data = read_json(inside(pkg, MANIFEST_NAME, "manifest"))
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        hint = " (re-export it with this version of crosslmm-edge)" if version == 1 else ""
        raise UserError(
            f"{path}: manifest format_version {version!r} is not supported; this "
            f"crosslmm-edge reads format {FORMAT_VERSION}{hint}"
        )
    try:
        manifest = manifest_from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        message = f"{path}: malformed manifest ({type(exc).__name__}: {exc}"[:300]
        raise UserError(message + ")") from None
    missing = [role for role in ROLES if role not in manifest.graphs]
    if missing:
        raise UserError(f"{path}: graphs {missing} missing")
    _check_files(pkg, manifest)
    return manifest
