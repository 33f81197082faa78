"""``quantize``: calibrate once, write the INT8 artifacts, add them to a package atomically.

``--in-place`` stages the new graphs in a hidden folder inside the package and
adds them with ``runtime.package.add_artifacts`` (old manifest or new, never
half). ``--out DIR`` builds a copy of the package in a hidden sibling folder
and renames it into place only when complete. Either way a failure leaves
nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime.errors import UserError
from ..runtime.package.files import staged_folder
from ..runtime.package.loader import add_artifacts, choose_artifacts
from ..runtime.package.manifest import load_manifest
from ..runtime.package.staging import clean_stale, temp_name
from .collect.calibrate import Calibration, calibrate, calibration_frames, disk_error
from .collect.progress import progress_bar
from .int4.options import Int4Options
from .int4.quantize_int4 import gptq_calibration, int4_artifacts
from .int8.quantize import QuantizeOptions, int8_artifacts, selected_nodes
from .int8.quantize_fp16 import trt_int8_artifacts

Log = Callable[[str], None]


def add_int8(
    folder: Path,
    calibration: Calibration,
    options: QuantizeOptions,
    extra: Callable | None = None,
    trt_int8: bool = False,
    int4: Int4Options | None = None,
) -> None:
    """Quantize ``folder``'s FP32 graphs and add them to it (``extra`` adds more artifacts).

    ``int4``: write the ``onnx/int4`` set instead of ``onnx/int8``. ``trt_int8``
    also writes the same quantization on the fp16 graphs (``onnx-trt/...``),
    before either set is added, so a failure adds neither.
    """
    staging = folder / f".quantize-{os.getpid()}"
    try:
        staging.mkdir()
        with progress_bar(3, "quantization", "graph") as bar:
            if int4 is None:
                built: Any = int8_artifacts(folder, staging, calibration, options, bar.update)
                artifacts = built
            else:
                built = int4_artifacts(folder, staging, calibration, options, int4, bar.update)
                artifacts = built.artifacts
        trt = _trt_artifacts(folder, staging, built, int4) if trt_int8 else {}
        add_artifacts(folder, artifacts, staging)
        if trt:  # one artifact per role and call: the second set, each write atomic
            add_artifacts(folder, trt, staging)
        if extra is not None:
            extra(folder, staging)
    except OSError as exc:
        raise disk_error(exc, folder, "writing the quantized graphs") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _trt_artifacts(folder: Path, staging: Path, built, int4: Int4Options | None):
    """The ``onnx-trt`` set on the fp16 graphs matching ``built`` (INT8 artifacts or an
    ``Int4Set``)."""
    if int4 is None:
        return trt_int8_artifacts(folder, staging, built, staging)
    from .int4.quantize_trt_int4 import trt_int4_artifacts

    return trt_int4_artifacts(folder, staging, built, staging, int4)


def _copy_package(source: Path, target: Path) -> None:
    for item in source.iterdir():
        if item.name.startswith("."):
            continue  # another writer's staging folder
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)


def quantize_package(
    package: Path,
    out: Path | None,
    options: QuantizeOptions,
    calib: list[str] | None,
    count: int,
    seed: int,
    max_drift: float | None = None,
    search_videos: int = 50,
    log: Log = print,
    trt_int8: bool = True,
    frames: int | None = None,
    int4: Int4Options | None = None,
) -> dict:
    """Add INT8 artifacts to ``package`` (or to a copy at ``out``); a summary dict.

    ``trt_int8``: also the ``onnx-trt/int8`` set, when the package has fp16 graphs.
    ``frames``: per calibration video (default: the package's export limit).
    ``int4``: add the ``onnx/int4`` set (INT4 LLM) instead of ``onnx/int8``.
    """
    if int4 is not None:
        int4.check()
    manifest = load_manifest(package)
    choose_artifacts(manifest, "onnx", "fp32")  # refuses a package without FP32 graphs
    trt_int8 = trt_int8 and _has_fp16(manifest, log, "int8" if int4 is None else "int4")
    selected_nodes(package, manifest, options)  # recipe and --exclude errors before any work
    calibration_frames(manifest, package, frames)  # and a --frames the package cannot take
    if out is not None and out.exists():
        raise UserError(f"--out {out}: already exists")
    if max_drift is not None and max_drift < 0:
        raise UserError(f"--max-drift must not be negative, got {max_drift}")
    # Named with our pid, so the next run removes one a kill -9 left behind.
    clean_stale(Path(tempfile.gettempdir()), "crosslmm-quantize")
    with tempfile.TemporaryDirectory(prefix=temp_name("crosslmm-quantize") + "-") as temp:
        gram, also = gptq_calibration(package, int4)
        source = (calib, count, seed)
        calibration = calibrate(package, Path(temp), source, options, log, frames, gram, also)
        kept: dict[str, str] = {}
        if max_drift is not None and int4 is not None:
            from .int4.search_int4 import search_int4

            int4, kept = search_int4(package, calibration, options, int4, max_drift, search_videos)
        elif max_drift is not None:
            from .int8.search import search_recipe

            options, kept = search_recipe(package, calibration, options, max_drift, search_videos)
        if out is None:
            add_int8(package, calibration, options, trt_int8=trt_int8, int4=int4)
            target = package
        else:
            with staged_folder(out, "package") as staged:
                _copy_package(package, staged)
                add_int8(staged, calibration, options, trt_int8=trt_int8, int4=int4)
            target = out
    return _summary(target, options, kept, calibration, "int8" if int4 is None else "int4")


def _has_fp16(manifest, log: Log, precision: str) -> bool:
    """Whether the package holds fp16 graphs; if not, one line on how to add them."""
    if "onnx/fp16" in manifest.labels():
        return True
    log(
        f"note: no TensorRT {precision.upper()} graphs (onnx-trt/{precision}): they need the "
        "fp16 graphs; run `crosslmm-edge export CKPT --add --dtype fp16 --out PKG`, "
        "then quantize again"
    )
    return False


def _summary(
    target: Path, options: QuantizeOptions, kept: dict, calibration, precision: str
) -> dict:
    manifest = load_manifest(target)
    chosen = choose_artifacts(manifest, "onnx", precision)
    build = {role: a.build for role, a in chosen.by_role.items()}
    kept = dict(kept)
    kept.setdefault("attention products, norms, softmax, residuals, gates", "recipe: not weights")
    if build["llm"].get("lm_head", "float") == "float":
        kept.setdefault("LM head", "recipe: logits feed every answer, kept float")
    return {
        "package": str(target),
        "recipe": options.recipe if not options.skip_groups else f"{options.recipe} (searched)",
        "exclude": list(options.exclude),
        "kept_float_groups": list(options.skip_groups),
        "kept_float": kept,
        "quantized_modules": {role: b["quantized_modules"] for role, b in build.items()},
        "cross_kv": build["llm"]["cross_kv"],
        "calibration_sha256": calibration.sha256,
        "calibration_videos": len(calibration.videos),
        "search": build["llm"].get("search"),
        "precision": precision,
        "llm_build": build["llm"],
        "trt_int8": f"onnx-trt/{precision}" in manifest.labels(),
        "cross_kv_memory_bytes": cross_kv_memory(manifest.model_config),
    }


def cross_kv_memory(model_config: dict) -> dict[str, dict[str, int]]:
    """Bytes of the T2V memory a video keeps, at 32 and 256 frames, per storage type."""
    from ..runtime.model.config import CrossLMMConfig
    from ..runtime.model.contract import ModelDims
    from .int8.kv_int8 import cross_kv_bytes

    d = ModelDims.from_config(CrossLMMConfig.from_dict(model_config))
    shape = (d.num_dcal, d.patches_per_frame, d.num_kv_heads, d.head_dim)
    return {
        str(frames): {
            kind: cross_kv_bytes(*shape, frames, size)
            for kind, size in (("fp32", 4), ("fp16", 2), ("int8", 1))
        }
        for frames in (32, 256)
    }
