"""A package's graphs against their roles: the manifest's records, then the real files.

Two checks, both before a graph first runs. ``check_manifest_contract``:
every artifact's recorded inputs and outputs carry exactly the names and
dims that ``runtime/model/contract.py`` gives its role for the package's config and
limits, and the limits fit the config. ``check_session``: a loaded graph's
real inputs and outputs (as the backend reports them) equal what the
manifest recorded, so a vision graph saved under the pooling name, or a
graph of another model with the same hash in a hand-edited manifest, is
refused with a message instead of failing deep inside a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import UserError
from ..model.config import CrossLMMConfig
from ..model.contract import (
    LLM,
    ROLES,
    ExportLimits,
    TensorSpec,
    cross_names,
    graph_specs,
    llm_spec,
)

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8")  # int8: quantized K/V


def limits_problems(config: CrossLMMConfig, limits: Mapping[str, int]) -> list[str]:
    """Why the manifest's limits do not fit the model (context vs positions and frames)."""
    context, frames = limits["max_context"], limits["max_frames"]
    visual = frames * config.tokens_per_frame
    problems = []
    if context > config.text_config.max_position_embeddings:
        problems.append(
            f"limits.max_context {context} exceeds max_position_embeddings "
            f"{config.text_config.max_position_embeddings}"
        )
    if context <= visual:
        problems.append(f"limits.max_context {context} cannot hold {frames} frames of video")
    return problems


def _signature(tensors: Sequence[TensorSpec]) -> list[tuple[str, tuple]]:
    return [(t.name, tuple(t.dims)) for t in tensors]


def _dtype_problem(recorded: TensorSpec, contract: TensorSpec) -> str | None:
    allowed = (contract.dtype,) if contract.dtype.startswith("int") else FLOAT_DTYPES
    ok = recorded.dtype in allowed
    return None if ok else f"{recorded.name} has dtype {recorded.dtype}"


def _artifact_problems(role: str, artifact, expected: Sequence) -> list[str]:
    """Names and dims against each acceptable spec of the role (all-logits or not)."""
    for spec in expected:
        if _signature(artifact.inputs) == _signature(spec.inputs) and _signature(
            artifact.outputs
        ) == _signature(spec.outputs):
            pairs = zip(
                (*artifact.inputs, *artifact.outputs), (*spec.inputs, *spec.outputs), strict=True
            )
            return [p for r, c in pairs if (p := _dtype_problem(r, c))]
    return [f"its inputs/outputs are not those of the {role} graph of this config"]


def _bind_problems(config: CrossLMMConfig, artifact) -> list[str]:
    """``dequantize_on_bind`` may name cross K/V inputs only, one scale per KV head."""
    memory = set(cross_names(config.num_dcal))
    heads = config.text_config.num_key_value_heads
    return [
        f"dequantize_on_bind {name}: not cross K/V with {heads} KV-head scales"
        for name, scales in artifact.dequantize_on_bind.items()
        if name not in memory or len(scales) != heads
    ]


def check_manifest_contract(config: CrossLMMConfig, manifest, where: str) -> None:
    """Raise ``UserError`` unless every artifact matches its role's contract."""
    problems = limits_problems(config, manifest.limits)
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems))
    limits = ExportLimits(manifest.limits["max_frames"], manifest.limits["max_context"])
    specs = graph_specs(config, limits)
    variants = {role: [specs[role]] for role in ROLES}
    variants[LLM] = [  # last-position or all logits, own or shared cache
        llm_spec(config, limits, "float32", all_logits, shared_kv)
        for all_logits in (False, True)
        for shared_kv in (False, True)
    ]
    for role in ROLES:
        entry = manifest.graphs[role]
        if entry.dims != {d.name: d for d in specs[role].dims}:
            raise UserError(f"{where}: the dynamic dims of graph {role} do not fit its limits")
        for artifact in entry.artifacts:
            found = _artifact_problems(role, artifact, variants[role])
            found += _bind_problems(config, artifact)
            if found:
                raise UserError(f"{where}: graph {role} ({artifact.label}): {'; '.join(found)}")


def _session_problems(recorded: Sequence[TensorSpec], actual: Mapping[str, TensorSpec]) -> list:
    names = [t.name for t in recorded]
    missing, extra = sorted(set(names) - set(actual)), sorted(set(actual) - set(names))
    if missing or extra:
        return [f"lacks {missing[:3]}" if missing else "", f"has {extra[:3]}" if extra else ""]
    problems = []
    for spec in recorded:
        real = actual[spec.name]
        if real.dtype != spec.dtype or len(real.dims) != len(spec.dims):
            problems.append(f"{spec.name} is {real.dtype} rank {len(real.dims)}")
        elif any(
            isinstance(d, int) and isinstance(r, int) and d != r
            for d, r in zip(spec.dims, real.dims, strict=True)
        ):
            problems.append(f"{spec.name} has shape {list(real.dims)}")
    return problems


def check_session(role: str, artifact, session) -> None:
    """Refuse a loaded graph whose real inputs/outputs differ from the manifest's record."""
    for kind, recorded, actual in (
        ("inputs", artifact.inputs, session.inputs),
        ("outputs", artifact.outputs, session.outputs),
    ):
        problems = [p for p in _session_problems(recorded, actual) if p]
        if problems:
            raise UserError(
                f"{artifact.file}: its {kind} do not match the manifest's {role} graph "
                f"({artifact.label}): {'; '.join(problems)}; is it another role's graph?"
            )
