"""Write a model package: three ONNX graphs, side files and ``manifest.json``.

The package is assembled in a hidden sibling folder and renamed into place
only when complete, so a failed export (bad checkpoint, disk full, Ctrl-C)
never leaves a partial package where the runtime would find it. More
precisions are added to an existing package through ``add_artifacts``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..runtime.errors import UserError
from ..runtime.model.config import CrossLMMConfig
from ..runtime.model.contract import (
    ROLES,
    ExportLimits,
    GraphSpec,
    default_limits,
    graph_specs,
)
from ..runtime.package.files import file_sha256, staged_folder
from ..runtime.package.loader import add_artifacts
from ..runtime.package.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Artifact,
    FileRef,
    GraphEntry,
    Manifest,
    load_manifest,
)
from ..runtime.package.staging import temp_name
from .checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG,
    TOKENIZER_FILES,
    checkpoint_hash,
    load_checkpoint,
    load_config,
)
from .graph_modules import graph_module
from .graph_specs import trace_sizes
from .onnx_export import OPSET, export_graph

DTYPES = {"fp32": (torch.float32, "float32"), "fp16": (torch.float16, "float16")}


def resolve_limits(
    config: CrossLMMConfig, max_frames: int | None, max_context: int | None
) -> ExportLimits:
    """The export's dynamic ranges: defaults from the config, checked against it."""
    default = default_limits(config)
    limits = ExportLimits(
        default.max_frames if max_frames is None else max_frames,
        default.max_context if max_context is None else max_context,
    )
    visual = limits.max_frames * config.tokens_per_frame
    if limits.max_frames < 1:
        raise UserError(f"--max-frames {limits.max_frames}: must be at least 1")
    if limits.max_context > config.text_config.max_position_embeddings:
        raise UserError(
            f"--max-context {limits.max_context} exceeds the model's "
            f"max_position_embeddings {config.text_config.max_position_embeddings}"
        )
    if limits.max_context <= visual:
        raise UserError(
            f"--max-context {limits.max_context} cannot hold {limits.max_frames} frames "
            f"({visual} visual tokens) plus any text"
        )
    return limits


def _tool_versions() -> dict[str, object]:
    import onnx
    import onnxruntime
    import onnxscript

    from .. import __version__

    return {
        "crosslmm_edge": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
    }


def artifact_file(role: str, precision: str, suffix: str = ".onnx") -> str:
    """An artifact's file name: ``llm.onnx`` (fp32 ONNX), ``llm.fp16.onnx``, ``llm.int8.plan``."""
    if (precision, suffix) == ("fp32", ".onnx"):
        return f"{role}{suffix}"
    return f"{role}.{precision}{suffix}"


def onnx_artifact(
    spec: GraphSpec, files: list[Path], precision: str, build: dict[str, object]
) -> Artifact:
    """The manifest record of an ONNX graph written to ``files`` (main file first)."""
    main, *external = files
    return Artifact(
        backend="onnx",
        precision=precision,
        file=main.name,
        sha256=file_sha256(main),
        inputs=spec.inputs,
        outputs=spec.outputs,
        external_data=tuple(FileRef(f.name, file_sha256(f)) for f in external),
        build=build,
    )


def _copy_side_files(checkpoint: Path, folder: Path) -> dict[str, object]:
    """Copy config, generation config and tokenizer files; return the manifest's ``files``."""
    shutil.copyfile(checkpoint / CONFIG_NAME, folder / CONFIG_NAME)
    tokenizer = [n for n in TOKENIZER_FILES if (checkpoint / n).is_file()]
    for name in tokenizer:
        shutil.copyfile(checkpoint / name, folder / name)
    generation = None
    if (checkpoint / GENERATION_CONFIG).is_file():
        shutil.copyfile(checkpoint / GENERATION_CONFIG, folder / GENERATION_CONFIG)
        generation = GENERATION_CONFIG
    names = [CONFIG_NAME, *tokenizer, *([generation] if generation else [])]
    # Hashed like the graphs: the runtime checks them before it tokenizes anything.
    hashes = {name: file_sha256(folder / name) for name in names}
    return {
        "config": CONFIG_NAME,
        "generation_config": generation,
        "tokenizer": tokenizer,
        "sha256": hashes,
    }


def _export_graphs(
    checkpoint: Path,
    folder: Path,
    limits: ExportLimits,
    precision: str,
    all_logits: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, GraphSpec], dict[str, Artifact]]:
    """Export the three graphs at ``precision`` into ``folder``; their specs and artifacts."""
    torch_dtype, onnx_dtype = DTYPES[precision]
    model = load_checkpoint(checkpoint, torch_dtype)
    config = model.config
    specs = graph_specs(config, limits, onnx_dtype, all_logits)
    sizes = trace_sizes(config)
    build = _tool_versions()
    artifacts = {}
    for role in ROLES:
        name = artifact_file(role, precision)
        log(f"exporting {name} ...")
        start = time.perf_counter()
        module = graph_module(role, model, all_logits)
        files = export_graph(
            module, specs[role], sizes[role], config.text_config.vocab_size, folder / name
        )
        artifacts[role] = onnx_artifact(specs[role], files, precision, build)
        size = sum(f.stat().st_size for f in files) / 2**20
        log(f"  {name}: {size:.1f} MiB in {time.perf_counter() - start:.1f} s")
    return specs, artifacts


def _write_package(
    checkpoint: Path,
    folder: Path,
    limits: ExportLimits,
    precisions: Sequence[str],
    all_logits: bool,
    log: Callable[[str], None],
) -> Manifest:
    graphs: dict[str, GraphEntry] = {}
    for precision in precisions:
        specs, artifacts = _export_graphs(checkpoint, folder, limits, precision, all_logits, log)
        for role in ROLES:
            dims = {d.name: d for d in specs[role].dims}
            kept = graphs[role].artifacts if role in graphs else ()
            graphs[role] = GraphEntry(dims, (*kept, artifacts[role]))
    if not (checkpoint / "tokenizer.json").is_file():
        log(f"warning: {checkpoint} has no tokenizer.json; the package cannot tokenize text")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source={
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": checkpoint_hash(checkpoint),
        },
        model_config=load_config(checkpoint).to_dict(),
        limits={"max_frames": limits.max_frames, "max_context": limits.max_context},
        files=_copy_side_files(checkpoint, folder),
        graphs=graphs,
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _add_precisions(
    checkpoint: Path,
    target: Path,
    precisions: Sequence[str],
    all_logits: bool,
    log: Callable[[str], None],
) -> Manifest:
    """Export more precisions into an existing package of the same checkpoint."""
    manifest = load_manifest(target)
    if manifest.source.get("checkpoint_sha256") != checkpoint_hash(checkpoint):
        raise UserError(f"--add: {target} was exported from another checkpoint")
    held = sorted({a.precision for g in manifest.graphs.values() for a in g.artifacts})
    again = [p for p in precisions if p in held]
    if again:
        raise UserError(f"--add: {target} already holds {again} graphs (it holds {held})")
    limits = ExportLimits(**manifest.limits)
    staging = target / temp_name("add")  # a killed run's is removed by the next add
    try:
        staging.mkdir()
        for precision in precisions:
            _, artifacts = _export_graphs(checkpoint, staging, limits, precision, all_logits, log)
            manifest = add_artifacts(target, artifacts, staging)  # all three roles at once
    except OSError as exc:
        raise UserError(f"{target}: adding graphs failed ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def export_package(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    max_frames: int | None = None,
    max_context: int | None = None,
    precisions: Sequence[str] = ("fp32",),
    force: bool = False,
    log: Callable[[str], None] = lambda message: None,
    all_logits: bool = False,
    add: bool = False,
) -> Manifest:
    """Export a CrossLMM checkpoint folder to a model package at ``out_dir``.

    ``max_frames`` (default: the config's ``num_frames``) and ``max_context``
    (default: ``max_position_embeddings`` capped at 8192) set the dynamic
    ranges recorded for engine builders. ``precisions``: one set of three
    graphs per entry ("fp32", "fp16"), side by side in one package. ``add``
    exports them into an existing package of the same checkpoint (its other
    artifacts and the video states made with them stay valid); otherwise an
    existing ``out_dir`` is replaced only with ``force``. ``all_logits``
    makes ``llm.onnx`` return every position's logits [1, seq_len, V]. User
    mistakes and write failures raise ``UserError``; nothing partial is left.
    """
    checkpoint, target = Path(checkpoint_dir), Path(out_dir)
    unknown = [p for p in precisions if p not in DTYPES]
    if unknown or not precisions:
        raise UserError(f"--dtype {unknown or precisions}: expected some of {sorted(DTYPES)}")
    precisions = list(dict.fromkeys(precisions))
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: checkpoint folder not found")
    if target.resolve() in (checkpoint.resolve(), *checkpoint.resolve().parents):
        raise UserError(f"--out {target}: would replace the checkpoint {checkpoint} itself")
    if add:
        return _add_precisions(checkpoint, target, precisions, all_logits, log)
    if os.path.lexists(target) and not force:  # lexists: a too-long name is no crash
        raise UserError(f"{target}: already exists (use --force to replace it, --add to extend it)")
    limits = resolve_limits(load_config(checkpoint), max_frames, max_context)
    with staged_folder(target, "package", force=force, marker=MANIFEST_NAME) as temp:
        manifest = _write_package(checkpoint, temp, limits, precisions, all_logits, log)
    return manifest
