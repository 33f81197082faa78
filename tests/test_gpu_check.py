"""The GPU check's logic, on the CPU: steps under one deadline, the report kept after
each step, the verdict on ``ask --json`` answers, the install step's refusals.

What needs a GPU (onnxruntime-gpu, the CUDA provider) is not run here; the
whole flow runs on the CPU with ``gpu_check --provider cpu`` (docs/gpu-check.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from crosslmm_edge.benchmarks import gpu_check, gpu_install
from crosslmm_edge.benchmarks.gpu_check_run import CannotRunHereError, Check, run_steps
from crosslmm_edge.benchmarks.gpu_check_steps import (
    compare_answers,
    parse_placements,
    pytest_counts,
)

QA = [{"question": "what color?", "answer": "red"}, {"question": "which shape?", "answer": "disc"}]


def _check(tmp_path: Path, provider: str = "cuda", seconds: float = 600) -> Check:
    return Check(
        provider, tmp_path / "out", tmp_path / "work", [tmp_path], time.monotonic() + seconds
    )


def _ask(answers: list[tuple[str, list[int]]], precision: str, provider: str | None) -> dict:
    out: dict = {
        "answers": [
            {"answer": text, "token_ids": ids, "decode_tokens_per_s": 100.0}
            for text, ids in answers
        ],
        "artifacts": [{"role": "llm", "backend": "onnx", "precision": precision}],
    }
    if provider:
        out["execution"] = {"backend": "onnxruntime", "provider": provider, "device": "cuda"}
    return out


def test_steps_record_pass_skip_fail_and_the_report_survives(tmp_path: Path) -> None:
    check = _check(tmp_path)
    check.out.mkdir(parents=True)

    def skipped(_: Check) -> dict:
        raise CannotRunHereError("not here")

    def failed(_: Check) -> dict:
        raise RuntimeError("boom")

    steps = [("a", lambda _: {"headline": {"tok/s": 12.5}}), ("b", skipped), ("c", failed)]
    assert run_steps(check, steps) is False
    report = json.loads((check.out / "report.json").read_text())
    assert [s["status"] for s in report["steps"].values()] == ["passed", "skipped", "failed"]
    assert report["steps"]["c"]["error"] == "RuntimeError: boom"
    text = (check.out / "summary.txt").read_text()
    assert "tok/s: 12.5" in text and "not here" in text


def test_no_step_starts_past_the_deadline(tmp_path: Path) -> None:
    check = _check(tmp_path, seconds=3)
    check.out.mkdir(parents=True)
    ran = []
    assert run_steps(check, [("late", lambda c: ran.append(c.run("x", ["true"])) or {})]) is False
    assert not ran and "no time left" in check.report["steps"]["late"]["error"]


def test_answers_verdict() -> None:
    cpu = _ask([("red", [5, 2]), ("disc", [7, 2])], "fp32", "cpu")
    same = _ask([("red", [5, 2]), ("disc", [7, 2])], "fp32", "cuda")
    assert compare_answers(cpu, same, QA, "cuda")["ok"]
    other = _ask([("red", [5, 2]), ("disc", [8, 7, 2])], "fp32", "cuda")  # right, other tokens
    verdict = compare_answers(cpu, other, QA, "cuda")
    assert not verdict["ok"] and verdict["correct"] == "2/2"  # fp32 must match the CPU
    fp16 = compare_answers(cpu, {**other, "artifacts": [{"precision": "fp16"}]}, QA, "cuda")
    assert fp16["ok"]  # fp16 may differ in tokens if it answers right
    wrong = _ask([("red", [5, 2]), ("square", [9, 2])], "fp16", "cuda")
    assert not compare_answers(cpu, wrong, QA, "cuda")["ok"]
    assert not compare_answers(cpu, _ask([("red", [5, 2]), ("disc", [7, 2])], "fp32", "cpu"),
                               QA, "cuda")["ok"]  # fmt: skip  # ran on the CPU after all


def test_pytest_counts() -> None:
    output = "ss..\nSKIPPED [2] tests/x.py:3: no CUDA\n4 passed, 2 skipped in 7.13s\n"
    assert pytest_counts(output) == {"passed": 4, "skipped": 2}
    assert pytest_counts("no summary") == {}


def test_install_refuses_a_bundle_for_another_python(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps({"python": "2.7", "parts": []}))
    with pytest.raises(RuntimeError, match=r"--python 3\.\d+"):
        gpu_install.install(_check(tmp_path))
    with pytest.raises(CannotRunHereError):
        gpu_install.install(_check(tmp_path, provider="cpu"))


def test_cli_writes_the_report_of_the_chosen_steps(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--provider", "cpu", "--out", str(out), "--work", str(tmp_path / "w")]
    assert gpu_check.main([*argv, "--steps", "install"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["steps"]) == ["install"] and report["provider"] == "cpu"
    assert "skipped  install" in capsys.readouterr().out


def test_node_placements_from_the_verbose_log() -> None:
    prefix = "2026-12-05 [V:onnxruntime:, session_state.cc:1601 VerifyEachNodeIsAssignedToAnEp]"
    log = "\n".join(
        [
            f"{prefix} Node placements",
            f"{prefix}  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 3",
            f"{prefix}   MatMul (/layers.0/MatMul)",
            f"{prefix}   MatMul (/layers.1/MatMul)",
            f"{prefix}   Softmax (/attn/Softmax)",
            f"{prefix}  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1",
            f"{prefix}   Shape (/Shape)",
        ]
    )
    assert parse_placements(log) == {
        "CUDAExecutionProvider": {"nodes": 3, "ops": {"MatMul": 2, "Softmax": 1}},
        "CPUExecutionProvider": {"nodes": 1, "ops": {"Shape": 1}},
    }
    one = f"{prefix}  All nodes placed on [CPUExecutionProvider]. Number of nodes: 524"
    assert parse_placements(one) == {"CPUExecutionProvider": {"nodes": 524, "ops": {}}}
