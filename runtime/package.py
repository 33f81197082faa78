"""A model package opened for running: its manifest, dims, limits and graph files.

The runtime trusts only ``manifest.json`` (docs/package-format.md), read by
``runtime.manifest``. Each graph file is checked against the manifest's
sha256 before it is loaded, so a truncated or swapped file is refused with
its name instead of failing inside the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.manifest import (
    MANIFEST_NAME,
    REQUIRED_ROLES,
    FileRef,
    Manifest,
    file_sha256,
    load_manifest,
)

GRAPH_ROLES = REQUIRED_ROLES


@dataclass(frozen=True)
class ModelDims:
    """The sizes the runtime needs, read from the model config in the manifest."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_dcal: int
    tokens_per_frame: int  # P
    patches_per_frame: int  # N
    image_size: int
    num_frames: int
    video_token_id: int
    v2v_scope: str

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelDims:
        """Dims of a CrossLMM ``config.json`` dict (Hugging Face key names)."""
        text, vision = config["text_config"], config["vision_config"]
        heads = text["num_attention_heads"]
        grid = vision["image_size"] // vision["patch_size"]
        return cls(
            num_layers=text["num_hidden_layers"],
            num_kv_heads=text["num_key_value_heads"],
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            hidden_size=text["hidden_size"],
            vocab_size=text["vocab_size"],
            num_dcal=text["num_hidden_layers"] // config.get("dcal_every", 4),
            tokens_per_frame=config.get("pooled_grid", 3) ** 2,
            patches_per_frame=grid * grid,
            image_size=vision["image_size"],
            num_frames=config.get("num_frames", 32),
            video_token_id=config["video_token_id"],
            v2v_scope=config.get("v2v_scope", "video"),
        )


class ModelPackage:
    """An exported package folder: manifest, dims, limits, verified graph paths."""

    def __init__(self, folder: Path, manifest: Manifest, manifest_sha256: str) -> None:
        self.folder = folder
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        manifest_path = folder / MANIFEST_NAME
        try:
            self.dims = ModelDims.from_config(manifest.model_config)
            self.max_context = int(manifest.limits["max_context"])
            self.max_frames = int(manifest.limits["max_frames"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise UserError(f"{manifest_path}: malformed manifest ({exc!r})") from None
        self._verified: set[str] = set()

    def graph_path(self, role: str, verify: bool = True) -> Path:
        """The ONNX file of graph ``role``, its sha256 checked once (unless ``verify`` is off)."""
        artifact = self.manifest.graphs[role].artifact("onnx")
        if verify and role not in self._verified:
            for ref in (FileRef(artifact.file, artifact.sha256), *artifact.external_data):
                if file_sha256(self.folder / ref.file) != ref.sha256:
                    raise UserError(
                        f"package {self.folder}: {ref.file} does not match the sha256 in "
                        "manifest.json (corrupt, truncated or replaced)"
                    )
            self._verified.add(role)
        return self.folder / artifact.file

    def verify_all(self) -> None:
        """Check every graph file now rather than on first use."""
        for role in GRAPH_ROLES:
            self.graph_path(role)


def open_package(folder: str | Path, verify: bool = True) -> ModelPackage:
    """Open a package folder; ``verify`` checks all graph hashes up front (else on load)."""
    folder = Path(folder)
    manifest = load_manifest(folder)  # checks the schema and that every file exists
    manifest_sha256 = file_sha256(folder / MANIFEST_NAME)
    package = ModelPackage(folder, manifest, manifest_sha256)
    if verify:
        package.verify_all()
    return package
