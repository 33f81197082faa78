"""The demo's INT8 step: quantize the package once, answer again, print the drift.

Kept small for CI: four synthetic calibration videos and the demo's own video.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

CALIBRATION_VIDEOS = 4


def int8_step(
    package: Path, video: Path, qas: list, fp32_answers: list[str], say: Callable[[str], None]
) -> None:
    """Add INT8 graphs to ``package`` unless present, answer ``qas`` with them, show drift."""
    from ..runtime.chat.assistant import RuntimeAssistant
    from ..runtime.chat.assistant_types import GenerationOptions
    from ..runtime.package.manifest import load_manifest
    from .drift_run import DriftItem, run_drift
    from .quantize import QuantizeOptions
    from .quantize_commands import print_summary
    from .quantize_package import quantize_package

    if "onnx/int8" not in load_manifest(package).labels():
        say(f"[INT8] quantizing with the default recipe ({CALIBRATION_VIDEOS} synthetic videos)")
        quantize_package(package, None, QuantizeOptions(), None, CALIBRATION_VIDEOS, 0, log=say)
    item = DriftItem(
        video,
        tuple(qa.question for qa in qas),
        tuple(qa.answer for qa in qas),
        tuple(qa.qtype for qa in qas),
    )
    say("[INT8] the same questions, FP32 and INT8 side by side:")
    int8 = RuntimeAssistant(package, precision="int8")
    int8.set_video(str(video))
    for qa, fp32_answer in zip(qas, fp32_answers, strict=True):
        answer = int8.ask(qa.question, GenerationOptions(max_new_tokens=8)).answer
        say(f"  Q: {qa.question}\n     fp32 {fp32_answer!r}   int8 {answer!r}   truth: {qa.answer}")
    say("[INT8] drift, INT8 against FP32 on the same inputs:")
    print_summary(run_drift(f"{package}@fp32", f"{package}@int8", [item], warn=say).to_json())
