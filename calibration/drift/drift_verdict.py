"""Is the drift within budget? One verdict, and the measures it was judged on.

The budget is in points (percentage points) of answers. Where ground truth
exists the measure is the worst accuracy drop over question types, test side
against reference side (the measure ``quantize --max-drift`` searches with).
Where it does not, an accuracy drop cannot be measured, so the measure is the
share of answers that changed: every answer lost to the drift is a changed
answer, so this share bounds the drop on any answer key from above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_BUDGET_POINTS = 1.0
# Scores are ratios of small counts; a drop equal to the budget is within it.
TOLERANCE_POINTS = 1e-9


@dataclass(frozen=True)
class Check:
    """One measure the verdict was judged on."""

    measure: str
    points: float
    questions: int
    detail: str


def worst_accuracy_drop(reference: dict[str, float], test: dict[str, float]) -> tuple[float, str]:
    """(the worst accuracy loss over question types in points, that type)."""
    drops = {qtype: 100.0 * (reference[qtype] - test[qtype]) for qtype in reference}
    worst = max(drops, key=lambda qtype: drops[qtype])
    return drops[worst], worst


def drift_verdict(
    accuracy: dict[str, dict[str, float]],
    truth_questions: int,
    no_truth_questions: int,
    no_truth_changed: int,
    budget: float | None,
) -> dict:
    """The ``verdict`` entry of a drift report.

    ``accuracy`` is {"ref": {type: accuracy}, "test": {...}} over the
    ``truth_questions`` that have ground truth (empty when none has);
    ``no_truth_changed`` of the ``no_truth_questions`` without it got another
    greedy answer. ``budget`` None judges against ``DEFAULT_BUDGET_POINTS``.
    """
    checks = []
    if accuracy.get("ref"):
        points, qtype = worst_accuracy_drop(accuracy["ref"], accuracy["test"])
        detail = f"worst type: {qtype}" if points > 0 else "no question type lost accuracy"
        checks.append(
            Check("worst accuracy drop over question types", points, truth_questions, detail)
        )
    if no_truth_questions:
        checks.append(
            Check(
                "answers changed (questions without ground truth)",
                100.0 * no_truth_changed / no_truth_questions,
                no_truth_questions,
                f"{no_truth_changed} of {no_truth_questions} answers differ",
            )
        )
    limit = DEFAULT_BUDGET_POINTS if budget is None else budget
    return {
        "budget_points": limit,
        "budget_source": "default" if budget is None else "--max-drift",
        "within": all(c.points <= limit + TOLERANCE_POINTS for c in checks),
        "checks": [asdict(c) for c in checks],
    }
