"""Check a package's graphs in ONNX Runtime against the PyTorch reference.

Each graph runs on fresh random inputs at several sizes (1, 2 and max frames;
chunks of 1 and more tokens; empty and non-empty past; text-only and visual
chunks) and every output is compared with ``CrossLMM``'s own methods — not
the export wrappers — so the pooling MatMul is checked against the
interpolation it replaces. A chained run (vision → pooling → prefill →
greedy decode) must pick the same tokens as the reference ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..runtime.errors import UserError
from ..runtime.inference.compare import compare, tolerance_for
from ..runtime.inference.pipeline import Pipeline
from ..runtime.model.contract import (
    LLM,
    POOLING,
    VISION_ENCODER,
    ExportLimits,
    GraphSpec,
    graph_specs,
    llm_sizes,
)
from ..runtime.package.manifest import Manifest, load_manifest
from .checkpoint import checkpoint_hash, load_checkpoint
from .dcal import CrossKV
from .graph_specs import random_inputs
from .model import CrossLMM
from .package import DTYPES
from .verify_chain import ChainResult, verify_chain


@dataclass(frozen=True)
class OutputCheck:
    """One output of one graph at one size: its error against PyTorch."""

    graph: str
    case: str
    output: str
    max_abs: float
    cosine: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return (
            f"{self.graph:<15} {self.case:<34} {self.output:<16} "
            f"max_abs={self.max_abs:.2e} cos={self.cosine:.6f} {status}"
        )


def pytorch_reference(
    role: str, model: CrossLMM, all_logits: bool = False
) -> Callable[..., list[torch.Tensor]]:
    """The PyTorch computation of graph ``role``, outputs flattened in spec order."""

    def vision(pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return [model.encode_frames(pixel_values)]

    def pooling(patch_features: torch.Tensor) -> list[torch.Tensor]:
        video = model.pool_and_project(patch_features)
        cross = [t for c in video.cross for t in (c.v2v_key, c.v2v_value, c.t2v_key, c.t2v_value)]
        return [video.visual_embeds, *cross]

    def llm(
        input_ids: torch.Tensor,
        visual_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        *caches: torch.Tensor,
    ) -> list[torch.Tensor]:
        split = 2 * model.config.text_config.num_hidden_layers
        past = [(caches[i], caches[i + 1]) for i in range(0, split, 2)]
        cross = [CrossKV(*caches[j : j + 4]) for j in range(split, len(caches), 4)]
        logits, new_kv = model(input_ids, visual_embeds, position_ids, past, cross)
        logits = logits.float() if all_logits else logits[:, -1].float()
        return [logits, *[t for kv in new_kv for t in kv]]

    return {VISION_ENCODER: vision, POOLING: pooling, LLM: llm}[role]


def size_cases(
    model: CrossLMM, limits: ExportLimits
) -> dict[str, list[tuple[str, dict[str, int]]]]:
    """Named dynamic sizes to test per role."""
    frames = sorted({1, min(2, limits.max_frames), limits.max_frames})
    framed = [(f"frames={f}", {"frames": f}) for f in frames]
    config, top = model.config, limits.max_frames
    chunks = [  # (text_len, frames, past_len, memory frames)
        (1, 0, 0, 1),
        (5, 0, 0, 2),
        (1, 0, 9, top),
        (4, 0, 6, 2),
        (3, 1, 0, 1),
        (2, min(2, top), 5, min(2, top)),
        (3, top, 0, top),
        (0, 1, 4, top),
    ]
    llm = [
        (f"text={t},frames={f},past={p},mem={m}", llm_sizes(config, t, f, p, m))
        for t, f, p, m in chunks
    ]
    return {VISION_ENCODER: framed, POOLING: framed, LLM: llm}


def _check_io_names(pipeline: Pipeline, spec: GraphSpec) -> None:
    session = pipeline.sessions[spec.role]
    names = (list(session.inputs), list(session.outputs))
    want = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if names != want:
        file = pipeline.artifacts.by_role[spec.role].file
        raise UserError(f"{file}: inputs/outputs differ from the contract of graph {spec.role!r}")


@torch.no_grad()
def verify_graph(
    pipeline: Pipeline,
    spec: GraphSpec,
    model: CrossLMM,
    cases: list[tuple[str, dict[str, int]]],
    seed: int,
) -> list[OutputCheck]:
    """Run graph ``spec`` at each case through the runtime's session and in PyTorch."""
    _check_io_names(pipeline, spec)
    session = pipeline.sessions[spec.role]
    precision = pipeline.artifacts.precision
    all_logits = len(spec.outputs[0].dims) == 3  # llm logits [1, seq_len, V]
    reference = pytorch_reference(spec.role, model, all_logits)
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for case, sizes in cases:
        inputs = random_inputs(spec, sizes, model.config.text_config.vocab_size, generator)
        expected = reference(*inputs.values())
        actual = session.run({name: t.numpy() for name, t in inputs.items()})
        for tensor, ref in zip(spec.outputs, expected, strict=True):
            ref32 = ref.float().numpy()
            max_abs, cosine = compare(ref32, actual[tensor.name].astype(np.float32))
            tolerance = tolerance_for(precision, ref32)
            checks.append(OutputCheck(spec.role, case, tensor.name, max_abs, cosine, tolerance))
    return checks


def resolve_checkpoint(manifest: Manifest, checkpoint: str | Path | None) -> Path:
    """The checkpoint to compare with: the given one, else the manifest's source if present."""
    if checkpoint is None:
        source = Path(manifest.source.get("checkpoint", ""))
        if not manifest.source.get("checkpoint") or not source.is_dir():
            raise UserError(
                f"the package's source checkpoint {str(source)!r} is gone; pass --checkpoint DIR"
            )
        checkpoint = source
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: checkpoint folder not found")
    if checkpoint_hash(checkpoint) != manifest.source.get("checkpoint_sha256"):
        raise UserError(
            f"{checkpoint}: not the checkpoint this package was exported from (hash differs)"
        )
    return checkpoint


@dataclass(frozen=True)
class VerifyReport:
    checks: list[OutputCheck]
    chains: list[ChainResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains) and all(check.ok for check in self.checks)

    @property
    def worst(self) -> OutputCheck:
        return max(self.checks, key=lambda check: check.max_abs / check.tolerance)


def verify_package(
    pkg_dir: str | Path,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda line: None,
    precisions: list[str] | None = None,
) -> VerifyReport:
    """Every ONNX artifact set (or ``precisions``) at every size case, then the chained run.

    Graphs run through the runtime's own pipeline on the CPU provider and are
    compared with the reference at the same precision. ``log`` receives one
    line per output and one per chain.
    """
    pkg = Path(pkg_dir)
    manifest = load_manifest(pkg)
    source = resolve_checkpoint(manifest, checkpoint)
    held = [label.split("/")[1] for label in manifest.labels() if label.startswith("onnx/")]
    wanted = precisions or [p for p in held if p in DTYPES]
    missing = [p for p in wanted if p not in held or p not in DTYPES]
    if missing or not wanted:
        raise UserError(f"{pkg}: no ONNX graphs to verify at {missing or wanted} (it holds {held})")
    limits = ExportLimits(**manifest.limits)
    checks, chains = [], []
    for precision in wanted:
        log(f"-- onnx/{precision}")
        pipeline = Pipeline(pkg, provider="cpu", precision=precision)
        model = load_checkpoint(source, DTYPES[precision][0])
        all_logits = len(manifest.graphs[LLM].artifacts[0].outputs[0].dims) == 3
        specs = graph_specs(model.config, limits, DTYPES[precision][1], all_logits)
        cases = size_cases(model, limits)
        for role, spec in specs.items():
            for check in verify_graph(pipeline, spec, model, cases[role], seed):
                log(check.line())
                checks.append(check)
        chains.append(verify_chain(pipeline, model, seed=seed))
        log(chains[-1].line())
    return VerifyReport(checks, chains)
