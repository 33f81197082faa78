"""Suite ``reuse``: follow-up TTFT over the first's; a saved state against a fresh encode."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from ..runtime.chat.assistant import RuntimeAssistant
from ..runtime.chat.assistant_types import GenerationOptions
from .cache_reuse import QUESTIONS, measure

FRAMES = (8, 16, 32)


def run_reuse(package: Path, args) -> dict:
    """Ratios at 8/16/32 frames on ``package`` (exported for at least 32 frames)."""
    from ..calibration.world.evaluate import write_scene_video

    out: dict = {}
    with tempfile.TemporaryDirectory() as temp:
        for frames in FRAMES:
            video = Path(temp) / f"scene-{frames}.mp4"
            write_scene_video(video, 5, 0, frames)
            times = measure(package, video, frames, args.repeats)
            first, second = statistics.median(times["file"]), statistics.median(times["second"])
            out[f"followup_over_first_{frames}"] = second / first
            out[f"first_ttft_ms_{frames}"] = first * 1000
            out[f"followup_ttft_ms_{frames}"] = second * 1000
        out.update(_state_vs_fresh(package, video, FRAMES[-1], args.repeats, Path(temp)))
    return out


def _state_vs_fresh(package: Path, video: Path, frames: int, repeats: int, temp: Path) -> dict:
    """Time to the first answer from a saved state vs from the video file."""
    options = GenerationOptions(max_new_tokens=4)
    state = temp / "state.npz"
    saver = RuntimeAssistant(package)
    saver.set_video(str(video), frames)
    saver.save_video_state(state)
    fresh: list[float] = []
    loaded: list[float] = []
    for _ in range(repeats):
        for source, bucket in ((None, fresh), (str(state), loaded)):
            assistant = RuntimeAssistant(package, verify_hashes=False)
            start = time.perf_counter()
            assistant.set_video(str(video), frames, state_file=source)
            assistant.ask(QUESTIONS[0], options)
            bucket.append(time.perf_counter() - start)
    return {
        "state_load_ms": statistics.median(loaded) * 1000,
        "fresh_encode_ms": statistics.median(fresh) * 1000,
        "state_over_fresh": statistics.median(loaded) / statistics.median(fresh),
    }
