"""GPTQ without a model: its blocks against round to nearest on rows it never saw, its
lazy batches against the one-channel-at-a-time elimination of the GPTQ paper, and the
streamed Gram matrix it reads."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from crosslmm_edge.calibration.collect.activation_stats import (
    GRAM_BATCH,
    ActivationStats,
    TensorStats,
)
from crosslmm_edge.calibration.collect.calibrate import held_bytes
from crosslmm_edge.calibration.int4.block_quant import (
    BlockScheme,
    block_params,
    quantize_weight,
    round_to_grid,
)
from crosslmm_edge.calibration.int4.gptq import (
    DAMP,
    GptqQuantizer,
    gptq_weight,
    inverse_cholesky,
    output_loss,
)


def _correlated_rows(rng: np.random.Generator, rows: int, channels: int) -> np.ndarray:
    """Activations whose channels are mixed and unevenly loud, as a layer's input is."""
    mixing = rng.standard_normal((channels, channels)) * rng.uniform(0.1, 3.0, channels)
    return (rng.standard_normal((rows, channels)) @ mixing / np.sqrt(channels)).astype(np.float32)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [32, 128])
def test_gptq_keeps_the_product_closer_than_rounding_on_unseen_rows(symmetric, block) -> None:
    rows = _correlated_rows(np.random.default_rng(block + symmetric), 5120, 256)
    seen, unseen = rows[:4096], rows[4096:]  # the Gram matrix never holds the rows scored
    weight = (np.random.default_rng(1).standard_normal((256, 96)) / 16).astype(np.float32)
    scheme = BlockScheme(4, block, symmetric)
    gptq = gptq_weight(weight, inverse_cholesky(seen.T.astype(np.float64) @ seen), scheme)
    rtn = quantize_weight(weight, scheme)
    low, high = scheme.levels
    assert gptq.values.min() >= low and gptq.values.max() <= high
    assert np.all(gptq.scales > 0) and gptq.scales.shape == rtn.scales.shape
    ratio = output_loss(unseen, weight, gptq.dequantize(block)) / output_loss(
        unseen, weight, rtn.dequantize(block)
    )
    assert ratio < 0.75, ratio


def _eliminating_gptq(weight: np.ndarray, gram: np.ndarray, scheme: BlockScheme) -> np.ndarray:
    """GPTQ as the paper first states it (OBQ's update, fixed order): quantize channel i,
    move its error onto the later channels by H⁻¹[i, j] / H⁻¹[i, i], then remove i from
    H⁻¹ by Gaussian elimination. No Cholesky factor, no lazy batches."""
    hessian = gram.astype(np.float64) + DAMP * np.mean(np.diag(gram)) * np.eye(len(gram))
    inverse = np.linalg.inv(hessian)
    work, size = weight.astype(np.float64), scheme.block_size
    values = np.empty(weight.shape)
    for i in range(len(work)):
        if i % size == 0:
            scales = block_params(work[None, i : i + size].astype(np.float32), scheme)[0][0]
        values[i] = round_to_grid(work[i], scales, None, scheme)
        error = (work[i] - values[i] * scales) / inverse[i, i]
        work[i + 1 :] -= np.outer(inverse[i, i + 1 :], error)
        inverse -= np.outer(inverse[:, i], inverse[i, :]) / inverse[i, i]
    return values


def test_lazy_batches_equal_the_papers_elimination() -> None:
    rows = _correlated_rows(np.random.default_rng(3), 2048, 160)  # 160: two lazy batches
    gram = rows.T.astype(np.float64) @ rows
    weight = (np.random.default_rng(4).standard_normal((160, 24)) / 8).astype(np.float32)
    scheme = BlockScheme(4, 32)
    ours = gptq_weight(weight, inverse_cholesky(gram), scheme).values
    theirs = _eliminating_gptq(weight, gram, scheme)
    assert np.mean(ours != theirs) < 0.005  # a rounding tie may fall the other way


def test_a_channel_that_never_fired_is_rounded_and_kept() -> None:
    rows = _correlated_rows(np.random.default_rng(5), 512, 64)
    rows[:, 10] = 0.0
    weight = np.random.default_rng(6).standard_normal((70, 8)).astype(np.float32)  # K % 32 != 0
    gram = np.zeros((70, 70))
    gram[:64, :64] = rows.T.astype(np.float64) @ rows
    block = gptq_weight(weight, inverse_cholesky(gram), BlockScheme(4, 32))
    assert block.values.shape == (70, 8) and block.scales.shape == (3, 8)
    assert np.all(np.isfinite(block.dequantize(32))) and np.any(block.values[10] != 0)


def test_the_streamed_gram_matrix_is_the_whole_one() -> None:
    rng = np.random.default_rng(8)
    runs = [rng.standard_normal((1, n, 12)).astype(np.float32) for n in (5, 1, 40)]
    stats = ActivationStats(gram_roles=("llm",))
    for run in runs:
        stats.add("llm", {"x": run})
        stats.add("pooling", {"x": run})
    whole = np.concatenate([r.reshape(-1, 12) for r in runs])
    tracked = stats.get("llm", "x")
    assert tracked is not None and tracked.gram is None  # 46 rows: still waiting in a batch
    gram = tracked.gram_matrix()
    assert gram is not None and not tracked.pending
    np.testing.assert_allclose(gram, whole.T @ whole, rtol=1e-5)
    for _ in range(7):  # 7 x 46 rows: a batch is folded in as it fills
        stats.add("llm", {"x": whole[None]})
    assert tracked.gram is not None and sum(len(r) for r in tracked.pending) < GRAM_BATCH
    np.testing.assert_allclose(tracked.gram_matrix(), 8 * (whole.T @ whole), rtol=1e-5)
    assert stats.get("pooling", "x").gram_matrix() is None  # only the roles asked keep one
    assert stats.nbytes() > tracked.gram.nbytes
    assert held_bytes({"llm": [12], "pooling": [12]}, ("llm",)) - held_bytes(
        {"llm": [12], "pooling": [12]}
    ) == 4 * 12 * (12 + GRAM_BATCH)


def test_the_quantizer_rounds_what_has_no_gram_or_eight_bits() -> None:
    rows = _correlated_rows(np.random.default_rng(9), 600, 64)
    stats = TensorStats()
    stats.add(rows, np.random.default_rng(0), gram=True)
    weight = np.random.default_rng(10).standard_normal((64, 16)).astype(np.float32)
    quantizer = GptqQuantizer({"x": stats})
    reads_x, reads_y = (helper.make_node("MatMul", [a, "w"], ["o"], name=a) for a in "xy")
    for node, scheme in ((reads_y, BlockScheme(4, 32)), (reads_x, BlockScheme(8, 32))):
        expected = quantize_weight(weight, scheme)
        assert np.array_equal(quantizer(node, weight, scheme).values, expected.values)
    gptq = quantizer(reads_x, weight, BlockScheme(4, 32))
    assert not np.array_equal(gptq.values, quantize_weight(weight, BlockScheme(4, 32)).values)
    record = quantizer.record()
    assert record["gptq_weights"] == 1 and 0 < record["gptq_loss_vs_rtn"] < 1


def test_the_comparison_with_onnx_runtimes_gptq_runs(monkeypatch, capsys) -> None:
    from crosslmm_edge.benchmarks import gptq_vs_ort

    monkeypatch.setattr("sys.argv", ["gptq_vs_ort", "--channels", "64", "--columns", "8"])
    gptq_vs_ort.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("ONNX Runtime: GPTQ" in line for line in lines[1:])
