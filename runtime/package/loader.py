"""A model package opened for running: manifest, model sizes, limits, chosen artifacts.

The runtime trusts only ``manifest.json`` (docs/package-format.md). It picks
one artifact per role for a backend and precision, checks each file against
the manifest's sha256 before it is loaded (and that it stays inside the
folder), checks the graphs' records against their roles' contract, and names
what it ran. Tools that
add artifacts (fp16, INT8, TensorRT engines) go through ``add_artifacts``,
which moves the new files in and rewrites the manifest last, atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..model.config import CrossLMMConfig
from ..model.contract import ROLES, ModelDims
from .containment import inside, name_problem, relative_to_graph
from .files import share_files, write_text_atomic
from .graph_contract import check_manifest_contract
from .hash_cache import HashCache
from .manifest import MANIFEST_NAME, Artifact, Manifest, load_manifest
from .manifest_fields import side_file_names
from .onnx_refs import external_data_locations
from .staging import clean_stale

# Precision tried first when none is asked for, per device: fp32 on a CPU (fp16 is
# emulated there), fp16 on a GPU. INT8 is always an explicit choice: it has a drift cost.
PRECISION_PREFERENCE = {"cpu": ("fp32", "fp16"), "cuda": ("fp16", "fp32")}


@dataclass(frozen=True)
class ArtifactSet:
    """The artifact chosen for each role: one backend, one precision."""

    backend: str
    precision: str
    by_role: dict[str, Artifact]

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"

    def sha256(self) -> str:
        """A hash of exactly the files that run (video states are keyed by it)."""
        digest = hashlib.sha256()
        for role in ROLES:
            for ref in self.by_role[role].files():
                digest.update(f"{role}:{ref.file}:{ref.sha256}\n".encode())
        return digest.hexdigest()

    def describe(self) -> list[dict[str, str]]:
        """What ran, for ``--json``: role, backend, precision, file."""
        return [
            {"role": role, "backend": a.backend, "precision": a.precision, "file": a.file}
            for role, a in self.by_role.items()
        ]


def choose_artifacts(
    manifest: Manifest, backend: str = "onnx", precision: str | None = None, device: str = "cpu"
) -> ArtifactSet:
    """The artifacts for ``backend`` at ``precision`` (None: the best for ``device``)."""
    held = manifest.labels()
    wanted = [precision] if precision else PRECISION_PREFERENCE.get(device, ("fp16", "fp32"))
    for candidate in wanted:
        found = {role: manifest.graphs[role].find(backend, candidate) for role in ROLES}
        if all(found.values()):
            return ArtifactSet(backend, candidate, found)  # type: ignore[arg-type]
    asked = f"{backend}/{precision}" if precision else f"a {backend} artifact set"
    raise UserError(
        f"the package holds no {asked} for every graph; it holds: {', '.join(held) or 'nothing'}"
    )


class ModelPackage:
    """An exported package folder: manifest, config, sizes, limits, verified files.

    ``hash_cache`` remembers large files that matched (``runtime/package/hash_cache.py``);
    None uses the per-user default.
    """

    def __init__(
        self, folder: Path, manifest: Manifest, hash_cache: HashCache | None = None
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        where = str(folder / MANIFEST_NAME)
        try:
            self.config = CrossLMMConfig.from_dict(manifest.model_config)
            self.max_context = int(manifest.limits["max_context"])
            self.max_frames = int(manifest.limits["max_frames"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: malformed manifest ({exc!r})") from None
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        check_manifest_contract(self.config, manifest, where)
        self.dims = ModelDims.from_config(self.config)
        self.hashes = hash_cache or HashCache.default()
        self._verified: set[tuple[str, str]] = set()
        self._side_files_verified = False

    def path(self, artifact: Artifact, verify: bool = True) -> Path:
        """The artifact's main file, checked once (unless ``verify`` is off).

        Checked: every file inside the package and matching its sha256, and,
        for an ONNX graph, every external-data file the graph itself names
        being one the manifest lists (so none escapes the hash check).
        """
        main = inside(self.folder, artifact.file, f"graph file ({artifact.label})")
        if verify and (artifact.file, artifact.sha256) not in self._verified:
            self.verify_side_files()
            for ref in artifact.files():
                self._check_hash(ref.file, ref.sha256)
            if artifact.backend in ("onnx", "onnx-trt"):  # both are ONNX files
                self._check_external_data(artifact)
            self._verified.add((artifact.file, artifact.sha256))
        return main

    def _check_hash(self, name: str, sha256: str) -> None:
        path = inside(self.folder, name, "file")
        try:
            same = self.hashes.matches(path, sha256)
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not same:
            raise UserError(
                f"package {self.folder}: {name} does not match the sha256 in "
                "manifest.json (corrupt, truncated or replaced)"
            )

    def _check_external_data(self, artifact: Artifact) -> None:
        """The graph's own external-data references: inside, listed, hence hashed."""
        listed = {ref.file for ref in artifact.external_data}
        named = external_data_locations(self.folder / artifact.file)
        for location in sorted(named):
            name = relative_to_graph(artifact.file, location)
            inside(self.folder, name, f"external data of {artifact.file}")
            if name not in listed:
                raise UserError(
                    f"package {self.folder}: graph {artifact.file} reads external data "
                    f"{location!r}, which manifest.json does not list with a sha256"
                )

    def verify_side_files(self) -> None:
        """Check config, generation config and tokenizer files against their sha256."""
        if self._side_files_verified:
            return
        hashes = self.manifest.files.get("sha256", {})
        for name in side_file_names(self.manifest.files):
            if name not in hashes:
                raise UserError(
                    f"package {self.folder}: manifest.json lists no sha256 for {name}; "
                    "re-export the package with this version of crosslmm-edge"
                )
            self._check_hash(name, hashes[name])
        self._side_files_verified = True

    def verify_all(self) -> None:
        """Check every artifact's files now rather than on first use."""
        for graph in self.manifest.graphs.values():
            for artifact in graph.artifacts:
                self.path(artifact)


def open_package(folder: str | Path, verify: bool = True) -> ModelPackage:
    """Open a package folder; ``verify`` checks all artifact hashes up front (else on load)."""
    folder = Path(folder)
    package = ModelPackage(folder, load_manifest(folder))
    if verify:
        package.verify_all()
    return package


def add_artifacts(folder: str | Path, artifacts: Mapping[str, Artifact], staging: Path) -> Manifest:
    """Add ``artifacts`` (role -> artifact) whose files wait in ``staging`` to a package.

    ``staging`` must be a folder inside the package (same file system): each
    file is renamed into place, then the manifest is rewritten atomically, so
    a reader sees the old manifest or the new one. Files of artifacts the
    package keeps are never overwritten.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    kept = {
        ref.file
        for graph in manifest.graphs.values()
        for a in graph.artifacts
        for ref in a.files()
        if all(a.label != new.label for new in artifacts.values())
    }
    names = [ref.file for a in artifacts.values() for ref in a.files()]
    bad = [name for name in names if name_problem(name)]
    if bad:
        raise UserError(f"{folder}: artifact file {bad[0]!r} is not a plain name inside it")
    clean_stale(folder)  # staging folders of killed tools (.add.tmp-PID, .quantize.tmp-PID)
    clash = sorted(set(names) & kept)
    if clash:
        raise UserError(f"{folder}: {clash} belong to artifacts the package keeps")
    moved: list[Path] = []
    try:
        for name in names:
            share_files([staging / name])  # ONNX and ORT save external data as 0600
            os.replace(staging / name, folder / name)
            moved.append(folder / name)
        for role, artifact in artifacts.items():
            manifest = manifest.with_artifact(role, artifact)
        write_text_atomic(folder / MANIFEST_NAME, manifest.to_json())
    except OSError as exc:
        for path in moved:
            path.unlink(missing_ok=True)
        raise UserError(f"cannot add artifacts to {folder}: {exc.strerror or exc}") from None
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    return manifest
