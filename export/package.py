"""Write a model package: three ONNX graphs, side files and ``manifest.json``.

The package is assembled in a hidden sibling folder and renamed into place
only when complete, so a failed export (bad checkpoint, disk full, Ctrl-C)
never leaves a partial package where the runtime would find it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from crosslmm_edge.export.checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG,
    TOKENIZER_FILES,
    checkpoint_hash,
    load_checkpoint,
    load_config,
)
from crosslmm_edge.export.config import CrossLMMConfig
from crosslmm_edge.export.graph_modules import graph_module
from crosslmm_edge.export.graph_specs import (
    ROLES,
    ExportLimits,
    GraphSpec,
    default_limits,
    graph_specs,
    trace_sizes,
)
from crosslmm_edge.export.onnx_export import OPSET, export_graph
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Artifact,
    DimRange,
    FileRef,
    GraphEntry,
    Manifest,
    TensorInfo,
    file_sha256,
)

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

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
    }


def _graph_entry(spec: GraphSpec, files: list[Path], precision: str) -> GraphEntry:
    main, *external = files
    artifact = Artifact(
        "onnx",
        precision,
        main.name,
        file_sha256(main),
        tuple(FileRef(f.name, file_sha256(f)) for f in external),
    )
    return GraphEntry(
        tuple(TensorInfo(t.name, t.dtype, t.dims) for t in spec.inputs),
        tuple(TensorInfo(t.name, t.dtype, t.dims) for t in spec.outputs),
        {d.name: DimRange(d.min, d.max, d.expr) for d in spec.dims},
        (artifact,),
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
    return {"config": CONFIG_NAME, "generation_config": generation, "tokenizer": tokenizer}


def _write_package(
    checkpoint: Path,
    folder: Path,
    limits: ExportLimits,
    dtype: str,
    all_logits: bool,
    log: Callable[[str], None],
) -> Manifest:
    torch_dtype, onnx_dtype = DTYPES[dtype]
    model = load_checkpoint(checkpoint, torch_dtype)
    config = model.config
    specs = graph_specs(config, limits, onnx_dtype, all_logits)
    sizes = trace_sizes(config)
    graphs = {}
    for role in ROLES:
        log(f"exporting {specs[role].file_name} ...")
        start = time.perf_counter()
        module = graph_module(role, model, all_logits)
        files = export_graph(
            module,
            specs[role],
            sizes[role],
            config.text_config.vocab_size,
            folder / specs[role].file_name,
        )
        graphs[role] = _graph_entry(specs[role], files, dtype)
        size = sum(f.stat().st_size for f in files) / 2**20
        log(f"  {specs[role].file_name}: {size:.1f} MiB in {time.perf_counter() - start:.1f} s")
    if not (checkpoint / "tokenizer.json").is_file():
        log(f"warning: {checkpoint} has no tokenizer.json; the package cannot tokenize text")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source={
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": checkpoint_hash(checkpoint),
        },
        model_config=config.to_dict(),
        limits={"max_frames": limits.max_frames, "max_context": limits.max_context},
        precision=dtype,
        tools=_tool_versions(),
        files=_copy_side_files(checkpoint, folder),
        graphs=graphs,
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _replace(temp: Path, target: Path) -> None:
    """Rename ``temp`` onto ``target``; an old package is removed only after that."""
    if not target.exists():
        temp.rename(target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    target.rename(old)
    temp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def export_package(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    max_frames: int | None = None,
    max_context: int | None = None,
    dtype: str = "fp32",
    force: bool = False,
    log: Callable[[str], None] = lambda message: None,
    all_logits: bool = False,
) -> Manifest:
    """Export a CrossLMM checkpoint folder to a model package at ``out_dir``.

    ``max_frames`` (default: the config's ``num_frames``) and ``max_context``
    (default: ``max_position_embeddings`` capped at 8192) set the dynamic
    ranges recorded for engine builders. ``dtype`` is "fp32" or "fp16". An
    existing ``out_dir`` is replaced only with ``force``. ``all_logits``
    makes ``llm.onnx`` return every position's logits [1, seq_len, V] instead
    of the last position's [1, V]. User mistakes and
    write failures raise ``UserError``; nothing partial is left behind.
    """
    checkpoint, target = Path(checkpoint_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if target.exists() and not force:
        raise UserError(f"{target}: already exists (use --force to replace it)")
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: checkpoint folder not found")
    if target.resolve() in (checkpoint.resolve(), *checkpoint.resolve().parents):
        raise UserError(f"--out {target}: would replace the checkpoint {checkpoint} itself")
    limits = resolve_limits(load_config(checkpoint), max_frames, max_context)
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        manifest = _write_package(checkpoint, temp, limits, dtype, all_logits, log)
        _replace(temp, target)
    except OSError as exc:
        raise UserError(f"{target}: writing the package failed ({exc})") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return manifest
