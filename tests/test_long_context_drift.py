"""``benchmarks.long_context_drift``: the logit comparison, and a run on the embedded model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crosslmm_edge.benchmarks.long_context_drift import compare_logits, main, teacher_forced
from crosslmm_edge.runtime.package.loader import open_package


def test_compare_logits_counts_flips_with_the_reference_gap() -> None:
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]])
    test = np.array([[2.0, 1.0, 0.0], [0.0, 0.4, 0.5]])  # row 1's top-1 moves to index 2
    out = compare_logits(ref, test)
    assert out["sqnr_db"] == pytest.approx(10 * math.log10(6.25 / 0.36))
    assert out["max_change_over_max_logit"] == pytest.approx(0.6 / 2.0)
    assert out["top1_agreement"] == 0.5
    assert out["ref_top2_gap_at_flips"] == pytest.approx([0.5])
    assert out["ref_top2_gap_median"] == pytest.approx(0.75)
    assert out["kl_max"] > out["kl_mean"] > 0


def _run(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_a_package_against_itself_is_identical_and_fp16_is_not(
    embedded_fp16_package, capsys
) -> None:
    pkg = embedded_fp16_package
    positions = 4 + open_package(pkg, verify=False).dims.tokens_per_frame + 7
    common = ("--positions", str(positions), "--steps", "3", "--threads", "1")
    same = _run(capsys, f"{pkg}@fp32", f"{pkg}@fp32", *common)[str(positions)]
    assert same["sqnr_db"] is None and same["top1_agreement"] == 1.0
    assert same["ref_top2_gap_at_flips"] == [] and same["kl_max"] == 0.0
    half = _run(capsys, f"{pkg}@fp32", f"{pkg}@fp16", *common)[str(positions)]
    assert half["sqnr_db"] > 20 and 0 < half["rel_l2"] < 0.1


def test_positions_past_the_context_are_refused_in_one_line(embedded_fp16_package, capsys):
    pkg = embedded_fp16_package
    too_long = open_package(pkg, verify=False).max_context
    with pytest.raises(SystemExit) as exit_info:
        main([str(pkg), str(pkg), "--positions", str(too_long), "--steps", "4"])
    assert exit_info.value.code == 2
    assert "--positions must lie in" in capsys.readouterr().err


def test_each_step_keeps_its_own_logits(embedded_fp16_package) -> None:
    """Every row is its own step's logits, not the session's reused output buffer: a
    decoded step's logits differ from the prompt's, and re-running the prompt alone gives
    its row again."""
    from crosslmm_edge.benchmarks.long_context_drift import filled_logits
    from crosslmm_edge.runtime.inference.pipeline import Pipeline

    ref = Pipeline(embedded_fp16_package, precision="fp32", threads=1)
    test = Pipeline(embedded_fp16_package, precision="fp16", threads=1)
    prompt = [11, 12, 13, 14, 15]
    ref_rows, test_rows, positions = teacher_forced(ref, test, prompt, steps=3)
    assert ref_rows.shape[0] == test_rows.shape[0] == 4
    assert positions == 4 + ref.dims.tokens_per_frame + len(prompt)
    assert not np.array_equal(ref_rows[0], ref_rows[-1])
    np.testing.assert_array_equal(filled_logits(ref, prompt, 3)[2], ref_rows[0])
