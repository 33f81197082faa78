"""Statistics of the weight MatMuls' input activations, collected while the runtime runs.

Calibration used to copy every feed of every graph to disk and replay them
through ONNX Runtime's calibrator: over 40 GB for a 0.5B-shaped model at 64
frames. What the quantizers need is far smaller, so it is gathered as the
FP32 runtime answers the calibration questions:

- INT8 ranges: the running min and max of each activation a selected MatMul
  reads (what ``MinMaxCalibrater`` computes, streamed);
- AWQ: the mean |x| of each input channel, and a bounded reservoir of rows
  (seeded, uniform over every row seen) to score candidate scales on;
- GPTQ (only for the roles asked): the Gram matrix ``Σ xᵀx`` [C, C] of every
  row seen, in float32: 4·C² bytes per activation.

``StatsSession`` runs a copy of the graph whose outputs also name those
activations, hands them to ``ActivationStats``, and returns only the graph's
own outputs, so the runtime sees the graph it expects and each feed runs once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ...runtime.backends.base import DeviceArray, GraphSession
from ...runtime.package.onnx_refs import external_data_locations

RESERVOIR_ROWS = 256  # rows kept per activation for AWQ's scale search
# Rows folded into a Gram matrix at once: a decode step brings one row, and folding
# each alone would read and write the whole [C, C] matrix per step.
GRAM_BATCH = 256


@dataclass
class TensorStats:
    """Running statistics of one activation (rows = every position, last axis = channels)."""

    low: float = float("inf")  # float32 values, exactly representable
    high: float = float("-inf")
    abs_sum: np.ndarray | None = None  # float64 [C]
    rows: int = 0
    reservoir: np.ndarray | None = None  # float32 [<= RESERVOIR_ROWS, C]
    gram: np.ndarray | None = None  # float32 [C, C], Σ xᵀx of the rows folded in so far
    pending: list[np.ndarray] = field(default_factory=list, repr=False)  # rows to fold in

    def add(self, value: np.ndarray, rng: np.random.Generator, gram: bool = False) -> None:
        """Fold one run's activation in (an empty one changes nothing); ``gram``: also
        into the Gram matrix."""
        if value.size == 0:
            return
        self.low = min(self.low, float(value.min()))
        self.high = max(self.high, float(value.max()))
        rows = value.reshape(-1, value.shape[-1]).astype(np.float32, copy=False)
        absolute = np.abs(rows).sum(axis=0, dtype=np.float64)
        self.abs_sum = absolute if self.abs_sum is None else self.abs_sum + absolute
        if gram:
            self.pending.append(np.array(rows))  # a copy: the run's buffer may be reused
            if sum(len(r) for r in self.pending) >= GRAM_BATCH:
                self._fold()
        self._sample(rows, rng)
        self.rows += len(rows)

    def _sample(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        """Reservoir sampling (algorithm R) over all rows seen so far."""
        if self.reservoir is None:
            self.reservoir = np.empty((0, rows.shape[1]), np.float32)
        room = RESERVOIR_ROWS - len(self.reservoir)
        if room > 0:
            self.reservoir = np.concatenate([self.reservoir, rows[:room]])
            rows, seen = rows[room:], self.rows + room
        else:
            seen = self.rows
        if not len(rows):
            return
        slots = rng.integers(0, seen + 1 + np.arange(len(rows)))
        hit = slots < RESERVOIR_ROWS
        self.reservoir[slots[hit]] = rows[hit]  # later rows win a shared slot, as in order

    def gram_matrix(self) -> np.ndarray | None:
        """Σ xᵀx [C, C] over every row seen (None unless ``add`` was asked for it)."""
        self._fold()
        return self.gram

    def _fold(self) -> None:
        if not self.pending:
            return
        batch = np.concatenate(self.pending)  # [rows, C]
        self.pending = []
        if self.gram is None:
            self.gram = batch.T @ batch
        else:
            self.gram += batch.T @ batch

    @property
    def mean_abs(self) -> np.ndarray:
        """Mean |x| per input channel."""
        assert self.abs_sum is not None
        return (self.abs_sum / max(self.rows, 1)).astype(np.float32)

    def symmetric_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(-max|x|, max|x|) as 0-d float32 arrays, as ``MinMaxCalibrater`` reports it."""
        bound = np.float32(max(abs(self.low), abs(self.high)))
        return np.array(-bound, np.float32), np.array(bound, np.float32)


@dataclass
class ActivationStats:
    """``TensorStats`` per graph role and activation name."""

    seed: int = 0
    by_role: dict[str, dict[str, TensorStats]] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    gram_roles: tuple[str, ...] = ()  # roles whose activations also keep a Gram matrix

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def add(self, role: str, values: Mapping[str, np.ndarray]) -> None:
        """One run of ``role``'s graph: its tracked activations."""
        table = self.by_role.setdefault(role, {})
        gram = role in self.gram_roles
        for name, value in values.items():
            table.setdefault(name, TensorStats()).add(np.asarray(value), self.rng, gram)
        self.runs[role] = self.runs.get(role, 0) + 1

    def get(self, role: str, name: str) -> TensorStats | None:
        return self.by_role.get(role, {}).get(name)

    def nbytes(self) -> int:
        """Bytes held (the reservoirs dominate, or the Gram matrices where kept)."""
        total = 0
        for table in self.by_role.values():
            for stats in table.values():
                for array in (stats.reservoir, stats.abs_sum, stats.gram, *stats.pending):
                    total += 0 if array is None else array.nbytes
        return total


class StatsSession(GraphSession):
    """A graph session whose run also reports the tracked activations to ``stats``."""

    def __init__(
        self, inner: GraphSession, role: str, tracked: list[str], stats: ActivationStats
    ) -> None:
        self.inner, self.role, self.stats = inner, role, stats
        self.name, self.inputs = inner.name, inner.inputs
        self.from_feeds = [n for n in tracked if n in inner.inputs]
        self.extra = [n for n in tracked if n not in inner.inputs]
        self.outputs = {k: v for k, v in inner.outputs.items() if k not in set(self.extra)}

    def run(self, feeds, write_to=None, fetch=None) -> dict[str, np.ndarray]:
        write_to = write_to or {}
        if fetch is None:
            fetch = [n for n in self.outputs if n not in write_to]
        result = self.inner.run(feeds, write_to, list(fetch) + self.extra)
        seen = {name: result.pop(name) for name in self.extra}
        for name in self.from_feeds:
            value = feeds[name]
            seen[name] = value.numpy() if isinstance(value, DeviceArray) else value
        self.stats.add(self.role, seen)
        return result


def write_tracking_graph(source: Path, target: Path, tracked: list[str]) -> None:
    """A copy of ``source`` at ``target`` whose outputs also name ``tracked`` activations.

    Only the graph proto is rewritten; its external-data file is hard-linked
    (or, across file systems, symlinked) beside it, so no weight is copied.
    """
    model = onnx.load(str(source), load_external_data=False)
    inputs = {i.name for i in model.graph.input}
    for name in tracked:
        if name not in inputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    for location in external_data_locations(source):
        _link(source.parent / location, target.parent / location)
    onnx.save(model, str(target))


def remove_tracking_graphs(folder: Path) -> None:
    """Delete the tracking copies and their links to the package's weights (onnx refuses
    to load external data that has several hard links)."""
    shutil.rmtree(folder, ignore_errors=True)


def _link(data: Path, linked: Path) -> None:
    """``linked`` names ``data``'s bytes: a hard link, else a symlink, else a copy."""
    linked.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(data, linked)
    except OSError:
        try:
            linked.symlink_to(data.resolve())
        except OSError:
            shutil.copy(data, linked)
