"""INT4 weights on the fp16 graphs, for TensorRT (``onnx-trt/int4``).

TensorRT 10 takes INT4 weight-only quantization as a blocked, symmetric
``DequantizeLinear`` (int4 initializer, fp16 scales, zero point 0, opset 21)
feeding a ``MatMul``; a strongly typed network keeps everything else fp16.
This module writes that on the package's fp16 LLM for the same MatMuls and
storage as the ``onnx/int4`` LLM (paired by module path, as
``quantize_fp16`` pairs the INT8 ones), with the same AWQ factors when AWQ
was used, the same blocks (read back from the ``onnx/int4`` graph, fp16
scales) when GPTQ made symmetric ones, and the INT8 cross K/V input. INT8
groups become per-channel INT8 weights (TensorRT blocks INT4 only). The
vision and pooling graphs are the ``onnx-trt/int8`` form of the set's
INT8-recipe graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ...runtime.model.contract import LLM, ROLES
from ...runtime.package.loader import choose_artifacts
from ...runtime.package.manifest import Artifact, load_manifest
from ..int8 import kv_int8
from ..int8.quantize_fp16 import (
    FP16_TINY,
    paired_names,
    trt_int8_graph,
    trt_twin_artifact,
)
from .block_quant import OPSET, BlockScheme, BlockWeight, stored_block
from .options import Int4Options
from .quantize_int4 import (
    Int4Set,
    block_quantize_model,
    head_matmul,
    llm_plan,
    rounded,
    save_graph,
    untie_head,
)


def _trt_scheme(scheme: BlockScheme, rows: int) -> BlockScheme:
    """INT4 blocks of the same size, symmetric (TensorRT takes no zero points, so an
    ``--asymmetric`` or HQQ set's twin is symmetric RTN); INT8 as one block per column."""
    return (
        BlockScheme(4, scheme.block_size, True) if scheme.bits == 4 else BlockScheme(8, rows, True)
    )


def trt_int4_llm(
    package_dir: Path,
    int4_llm: Artifact,
    int4: Int4Options,
    factors: dict[str, np.ndarray],
    target: Path,
    int4_dir: Path,
) -> list[Path]:
    """Write the fp16 LLM with the INT4 LLM's weight storage and AWQ ``factors`` (by
    fp32 MatMul name) to ``target``; a GPTQ set's blocks come from its graph in
    ``int4_dir``. Its files."""
    from .awq import apply_factors

    manifest = load_manifest(package_dir)
    fp32 = choose_artifacts(manifest, "onnx", "fp32").by_role[LLM]
    fp16 = choose_artifacts(manifest, "onnx", "fp16").by_role[LLM]
    fp32_model = onnx.load(str(package_dir / fp32.file), load_external_data=False)
    model = onnx.load(str(package_dir / fp16.file))
    pairs = paired_names(fp32_model, model, LLM)
    head, head32 = head_matmul(model), head_matmul(fp32_model)
    if head is not None and head32 is not None and int4.head != "float":
        untie_head(model, head)  # its own transposed weight, to quantize
        pairs[head32.name] = head.name
    rows = {t.name: t.dims[0] for t in model.graph.initializer if len(t.dims) == 2}
    weight_of = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    plan = {}
    for name, (_, scheme) in llm_plan(package_dir, manifest, _base_options(int4_llm), int4).items():
        mine = pairs[name]
        plan[mine] = _trt_scheme(scheme, int(rows[weight_of[mine]]))
    paired = {pairs[k]: v for k, v in factors.items()}
    transform = apply_factors(model, paired, np.dtype(np.float16)) if paired else None
    made = _gptq_blocks(int4_dir / int4_llm.file, pairs) if _shares_blocks(int4_llm) else {}

    def quantize(node: onnx.NodeProto, weight: np.ndarray, scheme: BlockScheme) -> BlockWeight:
        block = made.pop(node.name, None)  # each is read once: let it go
        four_bit = scheme.bits == 4 and scheme.symmetric
        if block is not None and block.values.shape == weight.shape and four_bit:
            return block  # GPTQ's blocks: the fp16 weight is the same weight, rounded
        return rounded(node, weight, scheme)

    block_quantize_model(model, plan, np.dtype(np.float16), transform, quantize)
    raw = int4_llm.build.get("cross_kv_scales") or {}
    scales = {name: np.maximum(np.asarray(v, np.float32), FP16_TINY) for name, v in raw.items()}
    if scales:
        kv_int8.dequantize_inputs(model, scales, np.dtype(np.float16))
    return save_graph(model, target, bool(fp16.external_data))


def _shares_blocks(int4_llm: Artifact) -> bool:
    """Whether the twin stores the INT4 LLM's own blocks: GPTQ's, when symmetric."""
    return int4_llm.build.get("algorithm") == "gptq" and bool(int4_llm.build.get("symmetric"))


def _gptq_blocks(path: Path, pairs: dict[str, str]) -> dict[str, BlockWeight]:
    """The symmetric 4-bit blocks of the ``onnx/int4`` graph at ``path``, by the fp16
    graph's MatMul name (``pairs``: fp32 name -> fp16 name)."""
    inits = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    found = {mine: stored_block(inits, theirs) for theirs, mine in pairs.items()}
    return {name: block for name, block in found.items() if block is not None}


def _base_options(artifact: Artifact):
    """The ``QuantizeOptions`` the INT4 LLM was written with (from its build record)."""
    from ..int8.quantize import QuantizeOptions

    build = artifact.build
    return QuantizeOptions(
        build["recipe"],
        tuple(build["exclude"]),
        build["cross_kv"] != "float",
        tuple(build["kept_float_groups"]),
    )


def trt_int4_artifacts(
    package_dir: Path,
    staging: Path,
    int4_set: Int4Set,
    int4_dir: Path,
    int4: Int4Options,
) -> dict[str, Artifact]:
    """``onnx-trt/int4`` artifacts in ``staging`` (the ``int4_set`` files are in ``int4_dir``)."""
    fp16 = choose_artifacts(load_manifest(package_dir), "onnx", "fp16")
    artifacts = {}
    for role in ROLES:
        source, base = fp16.by_role[role], int4_set.artifacts[role]
        target = staging / f"{role}.fp16.int4.onnx"
        if role == LLM:
            files = trt_int4_llm(package_dir, base, int4, int4_set.factors, target, int4_dir)
        else:
            files = trt_int8_graph(package_dir, role, base, int4_dir, target)
        build = {"opset": OPSET if role == LLM else base.build.get("opset", 19)}
        if role == LLM:
            # _trt_scheme: symmetric blocks whatever the ONNX Runtime set's (TensorRT takes
            # no zero points), so an HQQ or asymmetric GPTQ set's twin is round-to-nearest.
            build["symmetric"] = True
            if base.build.get("algorithm") in ("hqq", "gptq") and not _shares_blocks(base):
                build["algorithm"] = "rtn"
            build["scheme"] = (
                "weight-only int4 blocks, symmetric, fp16 scales (INT8 groups per-channel); "
                "TensorRT strongly typed"
            )
        artifacts[role] = trt_twin_artifact("int4", source, base, target, files, build)
    return artifacts
