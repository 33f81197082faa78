"""The wheels a GPU machine without network needs, carried there in parts.

``prepare`` (on a machine with network) downloads onnxruntime-gpu for the GPU
machine's Python, plus the few packages the check needs and that machine may
lack, packs them into one uncompressed tar (wheels are compressed already),
splits it into parts under ``PART_LIMIT`` (a device run carries at most
64 MiB) and writes ``bundle.json``: the sha256 of the whole tar, of each part
and of each wheel. On the GPU machine ``stash`` copies the parts one device
run brought to a folder outside the work tree, and ``unpack`` joins them,
checks every hash and extracts the wheelhouse. Standard library only: this
runs before anything is installed there.

    python3 -m crosslmm_edge.benchmarks.gpu_bundle prepare --python 3.12 --out .gpu-carry
    python3 -m crosslmm_edge.benchmarks.gpu_bundle stash --from .gpu-carry --to DIR
    python3 -m crosslmm_edge.benchmarks.gpu_bundle unpack --from DIR --to WHEELHOUSE
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..runtime.errors import UserError
from ..runtime.package.files import BLOCK, file_sha256, read_json, write_text_atomic

MANIFEST = "bundle.json"
TAR = "bundle.tar"
PART_LIMIT = 60 << 20  # bytes; one device run carries 64 MiB in all
DEFAULT_PART_MIB = 59.9  # the 3.12 bundle (299 MiB) fits 5 parts, not 6
ORT_GPU = "onnxruntime-gpu==1.31.1"  # a CUDA 13 build (libcublas.so.13, libcudart.so.13)
# The wheel tags a glibc >= 2.28 x86-64 machine accepts (pip takes them literally).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# What the check needs beyond numpy (the runtime's other dependencies, the export's and
# the tests'; PyTorch and transformers bring numpy, sympy, packaging, typing_extensions,
# setuptools and huggingface_hub), by import name: downloaded without their
# dependencies, installed on the GPU machine only where the import is missing.
EXTRAS = {
    "av": "av",  # the runtime's video decoder
    "PIL": "pillow",
    "tokenizers": "tokenizers",  # the runtime's (transformers brings them)
    "jinja2": "jinja2",
    "markupsafe": "markupsafe",
    "onnx": "onnx",  # export there: torch.onnx.export(dynamo=True)
    "onnxscript": "onnxscript",
    "onnx_ir": "onnx-ir",
    "ml_dtypes": "ml-dtypes",
    "google.protobuf": "protobuf",
    "pytest": "pytest",
    "pluggy": "pluggy",
    "iniconfig": "iniconfig",
    "pygments": "pygments",
    "wheel": "wheel",  # pip install . without build isolation (no network there)
}


def split_file(path: Path, part_bytes: int, out_dir: Path) -> list[dict]:
    """Cut ``path`` into equal parts of at most ``part_bytes``: ``NAME.001``, ``NAME.002``...

    Returns each part's file name, size and sha256.
    """
    if not 0 < part_bytes < PART_LIMIT:
        raise UserError(f"part size {part_bytes} bytes: must be above 0 and below {PART_LIMIT}")
    total = path.stat().st_size
    count = max(1, math.ceil(total / part_bytes))
    size = math.ceil(total / count)  # balanced: no tiny last part
    parts = []
    with open(path, "rb") as source:
        for index in range(1, count + 1):
            target = out_dir / f"{path.name}.{index:03d}"
            digest, written = hashlib.sha256(), 0
            with open(target, "wb") as handle:
                while written < size:
                    block = source.read(min(BLOCK, size - written))
                    if not block:
                        break
                    handle.write(block)
                    digest.update(block)
                    written += len(block)
            parts.append({"file": target.name, "size": written, "sha256": digest.hexdigest()})
    return parts


def find_part(part: dict, folders: Sequence[Path]) -> Path | None:
    """The first copy of ``part`` in ``folders`` with the right size (hash checked later)."""
    for folder in folders:
        candidate = folder / part["file"]
        if candidate.is_file() and candidate.stat().st_size == part["size"]:
            return candidate
    return None


def missing_parts(manifest: dict, folders: Sequence[Path]) -> list[str]:
    """File names of the parts no folder holds yet."""
    return [p["file"] for p in manifest["parts"] if find_part(p, folders) is None]


def join_parts(manifest: dict, folders: Sequence[Path], target: Path) -> None:
    """Concatenate the parts found in ``folders`` into ``target``, every hash checked.

    Raises ``UserError`` naming missing or damaged parts; ``target`` is
    written only when the whole matches the manifest's sha256.
    """
    missing = missing_parts(manifest, folders)
    if missing:
        raise UserError(f"parts not carried yet: {', '.join(missing)} (in {_names(folders)})")
    whole = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as out:
        for part in manifest["parts"]:
            path = find_part(part, folders)
            assert path is not None  # checked above
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(BLOCK):
                    digest.update(block)
                    whole.update(block)
                    out.write(block)
            if digest.hexdigest() != part["sha256"]:
                partial.unlink()
                raise UserError(f"{path}: sha256 differs from {MANIFEST} (damaged copy)")
    if whole.hexdigest() != manifest["sha256"]:
        partial.unlink()
        raise UserError(f"the joined {TAR} does not match the sha256 in {MANIFEST}")
    partial.replace(target)


def unpack(folders: Sequence[Path], wheelhouse: Path) -> dict:
    """Join, check and extract the bundle into ``wheelhouse``; returns its manifest."""
    manifest = load_bundle(folders)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    tar_path = wheelhouse / TAR
    join_parts(manifest, folders, tar_path)
    with tarfile.open(tar_path) as archive:
        members = archive.getmembers()
        names = {m.name for m in members if m.isfile()}
        wanted = {Path(entry["file"]).name for entry in manifest["wheels"]}
        if names != wanted or len(members) != len(names):
            raise UserError(f"{tar_path}: holds {sorted(names)}, expected {sorted(wanted)}")
        for member in members:  # plain files by their checked base names only
            source = archive.extractfile(member)
            assert source is not None  # a regular file (checked above)
            with source, open(wheelhouse / member.name, "wb") as handle:
                shutil.copyfileobj(source, handle, BLOCK)
    tar_path.unlink()
    for entry in manifest["wheels"]:
        if file_sha256(wheelhouse / entry["file"]) != entry["sha256"]:
            raise UserError(f"{wheelhouse / entry['file']}: sha256 differs from {MANIFEST}")
    return manifest


def load_bundle(folders: Sequence[Path]) -> dict:
    """The first ``bundle.json`` in ``folders``."""
    for folder in folders:
        if (folder / MANIFEST).is_file():
            return read_json(folder / MANIFEST)
    raise UserError(f"no {MANIFEST} in {_names(folders)}: run gpu_bundle prepare, carry it")


def stash(source: Path, dest: Path) -> list[str]:
    """Copy the manifest and the parts present in ``source`` into ``dest`` (each part's
    hash checked); returns the parts still missing from ``dest``."""
    manifest = load_bundle([source])
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / MANIFEST, dest / MANIFEST)
    for part in manifest["parts"]:
        path = find_part(part, [source])
        if path is None or find_part(part, [dest]) is not None:
            continue
        if file_sha256(path) != part["sha256"]:
            raise UserError(f"{path}: sha256 differs from {MANIFEST} (damaged in transit)")
        shutil.copyfile(path, dest / part["file"])
    return missing_parts(manifest, [dest])


def python_tag(version: str) -> str:
    """``3.12`` -> ``cp312``."""
    major, _, minor = version.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise UserError(f"--python {version!r}: expected MAJOR.MINOR, e.g. 3.12")
    return f"cp{major}{minor}"


def download(version: str, dest: Path) -> list[Path]:
    """pip download onnxruntime-gpu and the extras (no dependencies) for ``version``."""
    tag = python_tag(version)
    target = ["--python-version", version, "--implementation", "cp", "--abi", tag]
    for platform in PLATFORMS:
        target += ["--platform", platform]
    target += ["--only-binary=:all:", "-d", str(dest)]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *target]
    for extra in ([ORT_GPU], sorted(EXTRAS.values())):
        done = subprocess.run([*pip, *extra], capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"pip download {' '.join(extra)} failed: {done.stderr.strip()[-600:]}")
    return sorted(dest.glob("*.whl"))


def prepare(version: str, out: Path, part_mib: float = DEFAULT_PART_MIB) -> dict:
    """Download, pack and split into ``out``; returns the manifest written there."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-", dir=out) as temp:
        return pack(download(version, Path(temp)), version, out, int(part_mib * 2**20))


def pack(wheels: Sequence[Path], version: str, out: Path, part_bytes: int) -> dict:
    """Tar ``wheels``, split the tar into ``out`` (replacing an earlier bundle there) and
    write ``bundle.json``; returns it."""
    for old in [*out.glob(f"{TAR}.*"), out / MANIFEST]:
        old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-tar-", dir=out) as temp:
        tar_path = Path(temp) / TAR
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as archive:
            for wheel in wheels:
                archive.add(wheel, arcname=wheel.name, recursive=False)
        manifest = {
            "python": version,
            "requirement": ORT_GPU,
            "extras": EXTRAS,
            "wheels": [
                {"file": w.name, "size": w.stat().st_size, "sha256": file_sha256(w)} for w in wheels
            ],
            "size": tar_path.stat().st_size,
            "sha256": file_sha256(tar_path),
            "parts": split_file(tar_path, part_bytes, out),
        }
    write_text_atomic(out / MANIFEST, _json(manifest))
    return manifest


STASH_DIR = "/tmp/crosslmm-gpu-bundle"  # on the GPU machine, outside the work tree
CHECK = "python3 -m crosslmm_edge.benchmarks.gpu_check --out $OUT/gpu-check --time-limit 500"


def device_plan(manifest: dict, out: str) -> list[str]:
    """One line per device run: what it carries and the command it runs; the last one
    also runs the check."""
    stash = f"python3 -m crosslmm_edge.benchmarks.gpu_bundle stash --from {out} --to {STASH_DIR}"
    lines = []
    for index, part in enumerate(manifest["parts"], 1):
        command = f"{stash} && nvidia-smi -L" if index == 1 else stash
        if index == len(manifest["parts"]):
            command = f"{stash} && {CHECK}"
        lines.append(f"  {index}. carry {out}/{MANIFEST} {out}/{part['file']}; run: {command}")
    return lines


def _json(value: dict) -> str:
    import json

    return json.dumps(value, indent=1) + "\n"


def _names(folders: Sequence[Path]) -> str:
    return ", ".join(str(f) for f in folders)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: prepare | stash | unpack."""
    parser = argparse.ArgumentParser(prog="python3 -m crosslmm_edge.benchmarks.gpu_bundle")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="download and split (on a machine with network)")
    make.add_argument("--python", default="3.12", help="the GPU machine's Python (MAJOR.MINOR)")
    make.add_argument("--out", default=".gpu-carry", help="git-ignored folder for the parts")
    make.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB, help="below 60")
    keep = commands.add_parser("stash", help="keep the parts this device run carried")
    keep.add_argument("--from", dest="source", default=".gpu-carry")
    keep.add_argument("--to", dest="dest", required=True)
    join = commands.add_parser("unpack", help="join, check and extract the wheelhouse")
    join.add_argument("--from", dest="sources", action="append", required=True)
    join.add_argument("--to", dest="dest", required=True)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "prepare":
        manifest = prepare(args.python, Path(args.out), args.part_mib)
        print(
            f"{len(manifest['wheels'])} wheels, {manifest['size'] / 2**20:.1f} MiB in "
            f"{len(manifest['parts'])} parts under {args.out}/ (sha256 {manifest['sha256']})"
        )
        print("device runs, one right after another (docs/gpu-check.md):")
        print("\n".join(device_plan(manifest, args.out)))
        return 0
    if args.command == "stash":
        missing = stash(Path(args.source), Path(args.dest))
        here = f"Python {sys.version_info.major}.{sys.version_info.minor}"
        wanted = read_json(Path(args.dest) / MANIFEST)["python"]
        match = "matches" if here.endswith(f" {wanted}") else "DOES NOT MATCH"
        print(f"{here} {match} the bundle's {wanted}; still missing: {missing or 'none'}")
        return 0
    manifest = unpack([Path(s) for s in args.sources], Path(args.dest))
    print(f"{len(manifest['wheels'])} wheels checked into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
