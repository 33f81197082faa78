"""``crosslmm-edge demo``: checkpoint → package → torch-free runtime answers.

Generates a synthetic video with known answers, exports the embedded model to
a package, and lets the runtime answer the video's questions next to the
ground truth, showing each step and the cache-reuse timings.

``embedded_package`` is also what the samples use to get a package without
any path argument.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

Log = Callable[[str], None]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="export the embedded model and answer questions about a synthetic video",
        description="Generate a synthetic video, export the embedded model to a package and "
        "answer the video's questions with the torch-free runtime, next to the ground truth.",
    )
    demo.add_argument("--seed", type=int, default=7, help="which synthetic scene (default 7)")
    demo.add_argument(
        "--out", default=None, help="keep the video and package in this folder (default: temporary)"
    )
    demo.add_argument("--provider", default=None, help="execution provider (default: best)")
    demo.set_defaults(func=run_demo)


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo in ``--out`` or a temporary folder."""
    if args.out:
        folder = Path(args.out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from .runtime.errors import UserError

            raise UserError(f"cannot use --out {folder}: {exc.strerror or exc}") from None
        return _demo(folder, args.seed, args.provider)
    with tempfile.TemporaryDirectory(prefix="crosslmm-demo-") as temp:
        return _demo(Path(temp), args.seed, args.provider)


def _demo(folder: Path, seed: int, provider: str | None) -> int:
    from .calibration.world.evaluate import write_scene_video
    from .calibration.world.synthetic_world import normalise_answer
    from .runtime.chat.assistant_types import GenerationOptions

    checkpoint = model_checkpoint(lambda message: _say(f"[1/4] {message}"))
    frames = _num_frames(checkpoint)
    video = folder / f"scene-{seed}.mp4"
    _say(f"[2/4] writing synthetic scene {seed} ({frames} frames) to {video}")
    qas = write_scene_video(video, seed, 0, frames)
    package = folder / "package"
    _say(f"[3/4] exporting {checkpoint} to {package}")
    started = time.perf_counter()
    export_checkpoint(checkpoint, package, _say)
    _say(f"      exported in {time.perf_counter() - started:.1f} s")
    _say("[4/4] answering with the torch-free runtime")
    assistant = _open_runtime(package, provider)
    assistant.set_video(str(video))
    correct, answers = 0, []
    for qa in qas:
        answer = assistant.ask(qa.question, GenerationOptions(max_new_tokens=8))
        answers.append(answer.answer)
        right = normalise_answer(answer.answer) == qa.answer
        correct += right
        reuse = "prefix reused" if answer.video_prefix_reused else "video encoded + prefilled"
        _say(
            f"  Q: {qa.question}\n  A: {answer.answer!r}   truth: {qa.answer}   "
            f"{'ok' if right else 'WRONG'}   ({answer.ttft_s * 1000:.1f} ms to first token, "
            f"{reuse})"
        )
    _say(f"{correct}/{len(qas)} correct")
    from .calibration.demo_quantized import quantized_step

    quantized_step(package, video, qas, answers, _say)
    return 0


def _open_runtime(package: Path, provider: str | None):
    from .runtime.chat.assistant import RuntimeAssistant

    return RuntimeAssistant(package, provider=provider)


def _num_frames(checkpoint: Path) -> int:
    import json

    return int(json.loads((checkpoint / "config.json").read_text()).get("num_frames", 8))


def model_checkpoint(log: Log) -> Path:
    """The embedded checkpoint (it ships inside the package)."""
    from .models import embedded_model_dir
    from .runtime.errors import UserError

    embedded = embedded_model_dir()
    if not (embedded / "config.json").is_file():
        raise UserError(f"the embedded model is missing from this install ({embedded})")
    log(f"embedded model: {embedded}")
    return embedded


def export_checkpoint(checkpoint: Path, package: Path, log: Log) -> None:
    """Export ``checkpoint`` to ``package`` (replacing it), logging each graph."""
    from .export.graphs.package import export_package

    export_package(checkpoint, package, force=True, log=lambda m: log(f"      {m}"))


def embedded_package(cache_dir: str | Path | None = None, log: Log = _say) -> Path:
    """A package of the embedded model, exported once into a cache folder and reused.

    Exporting needs the export extra (torch); a device that has only the
    runtime should be given a package made elsewhere instead.
    """
    checkpoint = model_checkpoint(lambda message: None)
    from . import __version__

    # Key on the exporter's version too: a newer crosslmm-edge never reuses an old package.
    digest = hashlib.sha256(__version__.encode())
    digest.update((checkpoint / "config.json").read_bytes())
    for weights in sorted(checkpoint.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    base = Path(cache_dir or os.path.join(Path.home(), ".cache", "crosslmm-edge"))
    package = base / f"embedded-{digest.hexdigest()[:16]}"
    if not (package / "manifest.json").is_file():
        log(f"exporting the embedded model once to {package} ...")
        export_checkpoint(checkpoint, package, log)
    return package


if __name__ == "__main__":
    sys.exit(run_demo(argparse.Namespace(seed=7, out=None, provider=None)))
