"""``profile_decode``'s summary of an ONNX Runtime trace (synthetic events)."""

from __future__ import annotations

import pytest

from crosslmm_edge.benchmarks.profile_decode import summarize


def _kernel(name: str, op: str, ts: int, dur: int) -> dict:
    return {
        "cat": "Node",
        "name": f"{name}_kernel_time",
        "ts": ts,
        "dur": dur,
        "args": {"op_name": op},
    }


def test_kernel_time_is_split_by_op_and_by_block_over_the_last_runs() -> None:
    events = [
        {"name": "model_run", "ts": 0, "dur": 100},  # before the window: ignored
        _kernel("q", "MatMulNBits", 10, 50),
        {"name": "model_run", "ts": 1000, "dur": 400},
        _kernel("q", "MatMulNBits", 1010, 200),
        _kernel("cross", "Softmax", 1300, 100),
        _kernel("fused_by_ort", "QuickGelu", 1350, 40),
    ]
    out = summarize(events, 1, {"q": "decoder", "cross": "dcal"})
    assert out["step_ms"] == pytest.approx(0.4) and out["nodes_per_step"] == 3
    assert out["by_op_ms"] == pytest.approx({"MatMulNBits": 0.2, "Softmax": 0.1, "QuickGelu": 0.04})
    assert out["by_block_ms"] == pytest.approx({"decoder": 0.2, "dcal": 0.1, "unattributed": 0.04})
