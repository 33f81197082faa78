"""The demo's INT8 and INT4 step: quantize the package once per precision, answer again,
print the drift.

Kept small for CI: four synthetic calibration videos and the demo's own video.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

CALIBRATION_VIDEOS = 4


def quantized_step(
    package: Path, video: Path, qas: list, fp32_answers: list[str], say: Callable[[str], None]
) -> None:
    """Add INT8 and INT4 graphs to ``package`` unless present, answer ``qas`` with them
    beside the FP32 answers, show the drift of each."""
    from ..runtime.chat.assistant import RuntimeAssistant
    from ..runtime.chat.assistant_types import GenerationOptions
    from ..runtime.package.manifest import load_manifest
    from .drift.drift_run import DriftItem, run_drift
    from .int4.options import Int4Options
    from .int8.quantize import QuantizeOptions
    from .quantize_commands import print_summary
    from .quantize_package import quantize_package

    for precision, int4 in (("int8", None), ("int4", Int4Options())):
        if f"onnx/{precision}" not in load_manifest(package).labels():
            say(
                f"[{precision.upper()}] quantizing with the default recipe "
                f"({CALIBRATION_VIDEOS} synthetic videos)"
            )
            quantize_package(
                package, None, QuantizeOptions(), None, CALIBRATION_VIDEOS, 0, log=say, int4=int4
            )
    item = DriftItem(
        video,
        tuple(qa.question for qa in qas),
        tuple(qa.answer for qa in qas),
        tuple(qa.qtype for qa in qas),
    )
    say("[INT8/INT4] the same questions, FP32, INT8 and INT4 side by side:")
    quantized = {p: RuntimeAssistant(package, precision=p) for p in ("int8", "int4")}
    for assistant in quantized.values():
        assistant.set_video(str(video))
    options = GenerationOptions(max_new_tokens=8)
    for qa, fp32_answer in zip(qas, fp32_answers, strict=True):
        answers = "   ".join(
            f"{p} {a.ask(qa.question, options).answer!r}" for p, a in quantized.items()
        )
        say(f"  Q: {qa.question}\n     fp32 {fp32_answer!r}   {answers}   truth: {qa.answer}")
    for precision in quantized:
        say(f"[{precision.upper()}] drift, {precision.upper()} against FP32 on the same inputs:")
        report = run_drift(f"{package}@fp32", f"{package}@{precision}", [item], warn=say)
        print_summary(report.to_json())
