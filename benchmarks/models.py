"""The models a benchmark runs: a package (and its checkpoint) from a path or a preset.

``--model`` is a package folder whose manifest names its source checkpoint,
or ``preset:NAME`` (``export/checkpoints/random_model.py``), written and exported once
into the work folder and reused by later runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import UserError
from ..runtime.package.manifest import load_manifest


@dataclass(frozen=True)
class BenchModel:
    package: Path
    checkpoint: Path


def resolve_model(
    spec: str,
    workdir: Path,
    frames: int = 64,
    context: int = 4096,
    precisions: Sequence[str] = ("fp32",),
) -> BenchModel:
    """The package and checkpoint ``spec`` names, exporting a preset in ``precisions``
    when needed (a package folder must already hold them)."""
    if spec.startswith("preset:"):
        return _preset(spec.removeprefix("preset:"), workdir, frames, context, precisions)
    package = Path(spec)
    source = Path(load_manifest(package).source.get("checkpoint", ""))
    if not source.is_dir():
        raise UserError(f"{package}: its source checkpoint {source} is gone (needed for peers)")
    return BenchModel(package, source)


def _preset(
    name: str, workdir: Path, frames: int, context: int, precisions: Sequence[str]
) -> BenchModel:
    from ..export.checkpoints.random_model import random_checkpoint
    from ..export.graphs.package import export_package

    checkpoint, package = workdir / f"{name}-ck", workdir / f"{name}-pkg-{frames}x{context}"
    if tuple(precisions) != ("fp32",):  # the fp32 package keeps its old name
        package = package.with_name(f"{package.name}-{'-'.join(precisions)}")
    if not (checkpoint / "config.json").is_file():
        print(f"writing a random {name} checkpoint to {checkpoint} ...", flush=True)
        random_checkpoint(checkpoint, name, num_frames=frames, force=True)
    if not (package / "manifest.json").is_file():
        print(f"exporting it ({', '.join(precisions)}) to {package} ...", flush=True)
        export_package(
            checkpoint,
            package,
            max_frames=frames,
            max_context=context,
            precisions=precisions,
            force=True,
        )
    return BenchModel(package, checkpoint)
