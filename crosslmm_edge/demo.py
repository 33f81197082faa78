"""``crosslmm-edge demo``: checkpoint → package → torch-free runtime answers.

Generates a synthetic video with known answers, exports the embedded model to
a package, and lets the runtime answer the video's questions next to the
ground truth, showing each step and the cache-reuse timings. When the
embedded model is not installed, a tiny random model stands in (and the demo
says so: its answers are noise).

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
        folder.mkdir(parents=True, exist_ok=True)
        return _demo(folder, args.seed, args.provider)
    with tempfile.TemporaryDirectory(prefix="crosslmm-demo-") as temp:
        return _demo(Path(temp), args.seed, args.provider)


def _demo(folder: Path, seed: int, provider: str | None) -> int:
    from crosslmm_edge.calibration.evaluate import write_scene_video
    from crosslmm_edge.calibration.synthetic_world import normalise_answer
    from crosslmm_edge.runtime.assistant_types import GenerationOptions

    checkpoint = model_checkpoint(folder, lambda message: _say(f"[1/4] {message}"))
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
    correct = 0
    for qa in qas:
        answer = assistant.ask(qa.question, GenerationOptions(max_new_tokens=8))
        right = normalise_answer(answer.answer) == qa.answer
        correct += right
        reuse = "prefix reused" if answer.video_prefix_reused else "video encoded + prefilled"
        _say(
            f"  Q: {qa.question}\n  A: {answer.answer!r}   truth: {qa.answer}   "
            f"{'ok' if right else 'WRONG'}   ({answer.ttft_s * 1000:.1f} ms to first token, "
            f"{reuse})"
        )
    _say(f"{correct}/{len(qas)} correct")
    return 0


def _open_runtime(package: Path, provider: str | None):
    from crosslmm_edge.runtime.assistant import RuntimeAssistant

    return RuntimeAssistant(package, provider=provider)


def _num_frames(checkpoint: Path) -> int:
    import json

    return int(json.loads((checkpoint / "config.json").read_text()).get("num_frames", 8))


def model_checkpoint(folder: Path, log: Log) -> Path:
    """The embedded checkpoint, or a tiny random one written under ``folder``."""
    from crosslmm_edge.models import embedded_model_dir

    embedded = embedded_model_dir()
    if (embedded / "config.json").is_file():
        log(f"embedded model: {embedded}")
        return embedded
    log(
        "the embedded model is not installed; using a tiny RANDOM model instead "
        "(its answers are noise)"
    )
    return write_random_checkpoint(folder / "random-checkpoint")


def export_checkpoint(checkpoint: Path, package: Path, log: Log) -> None:
    """Export ``checkpoint`` to ``package`` (replacing it), logging each graph."""
    from crosslmm_edge.export.package import export_package

    export_package(checkpoint, package, force=True, log=lambda m: log(f"      {m}"))


def embedded_package(cache_dir: str | Path | None = None, log: Log = _say) -> Path:
    """A package of the embedded model, exported once into a cache folder and reused.

    Exporting needs the export extra (torch); a device that has only the
    runtime should be given a package made elsewhere instead.
    """
    from crosslmm_edge.models import embedded_model_dir

    checkpoint = embedded_model_dir()
    if not (checkpoint / "config.json").is_file():
        from crosslmm_edge.runtime.errors import UserError

        raise UserError(f"the embedded model is not installed ({checkpoint}); pass a package")
    digest = hashlib.sha256((checkpoint / "config.json").read_bytes())
    for weights in sorted(checkpoint.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    base = Path(cache_dir or os.path.join(Path.home(), ".cache", "crosslmm-edge"))
    package = base / f"embedded-{digest.hexdigest()[:16]}"
    if not (package / "manifest.json").is_file():
        log(f"exporting the embedded model once to {package} ...")
        export_checkpoint(checkpoint, package, log)
    return package


def write_random_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny random CrossLMM checkpoint with a byte-level tokenizer, for 32×32 frames."""
    import torch

    from crosslmm_edge.export.checkpoint import save_checkpoint
    from crosslmm_edge.export.config import CrossLMMConfig, TextConfig, VisionConfig
    from crosslmm_edge.export.model import build_model

    tokenizer_dir = folder.parent / f".{folder.name}-tokenizer"
    vocab, video_id, end_id = _write_byte_tokenizer(tokenizer_dir)
    config = CrossLMMConfig(
        vision_config=VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
        ),
        text_config=TextConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_theta=10000.0,
            eos_token_id=end_id,
        ),
        pooled_grid=2,
        dcal_every=2,
        video_token_id=video_id,
        num_frames=8,
    )
    torch.manual_seed(seed)
    return save_checkpoint(build_model(config), folder, tokenizer_src=tokenizer_dir)


def _write_byte_tokenizer(folder: Path) -> tuple[int, int, int]:
    """Byte-level tokenizer with the ChatML specials; returns (vocab, video id, im_end id)."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|video_pad|>"]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ids = [tokenizer.token_to_id(t) for t in specials]
    return tokenizer.get_vocab_size(), ids[3], ids[2]


if __name__ == "__main__":
    sys.exit(run_demo(argparse.Namespace(seed=7, out=None, provider=None)))
