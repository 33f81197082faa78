"""Benchmark rounds: warm-up, the order rotating, and ``decode_ab --fresh`` reopening packages."""

from __future__ import annotations

from crosslmm_edge.benchmarks import decode_ab
from crosslmm_edge.benchmarks.decode_ab import StepSettings, median_steps_ms


def _run(monkeypatch, fresh: bool) -> tuple[list[str], list[tuple[str, int]], dict]:
    opened: list[str] = []
    measured: list[tuple[str, int]] = []

    def open_package(name: str) -> tuple[str, int]:
        opened.append(name)
        return (name, len(opened))  # a stand-in pipeline: which package, which load

    def step_ms(pipeline, past, steps, frames) -> float:
        measured.append(pipeline)
        return float(len(measured))

    monkeypatch.setattr(decode_ab, "step_ms", step_ms)
    settings = StepSettings(past=8, steps=2, rounds=3, frames=1)
    rounds = median_steps_ms(open_package, ["a", "b", "c"], settings, fresh)
    return opened, measured, rounds


def test_the_order_rotates_each_round_over_pipelines_opened_once(monkeypatch) -> None:
    opened, measured, rounds = _run(monkeypatch, fresh=False)
    assert opened == ["a", "b", "c"]
    assert [name for name, _ in measured] == list("abcbcacab")
    assert {load for _, load in measured} == {1, 2, 3}
    assert rounds == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}


def test_fresh_opens_every_package_anew_each_round(monkeypatch) -> None:
    opened, measured, _ = _run(monkeypatch, fresh=True)
    assert opened == list("abcbcacab")
    assert [load for _, load in measured] == list(range(1, 10))  # never a reused pipeline


def test_a_warm_up_round_runs_every_entry_and_is_not_counted() -> None:
    from crosslmm_edge.benchmarks.timing import interleaved, rotating_rounds

    calls: list[str] = []

    def run(name: str) -> dict:
        calls.append(name)
        return {"n": float(len(calls))}

    runs = {name: (lambda name=name: run(name)) for name in "ab"}
    assert rotating_rounds(runs, 2) == {
        "a": [{"n": 4.0}, {"n": 5.0}],
        "b": [{"n": 3.0}, {"n": 6.0}],
    }
    assert calls == list("abbaab")
    assert interleaved(runs, 1) == {"a": {"n": 10.0}, "b": {"n": 9.0}}
