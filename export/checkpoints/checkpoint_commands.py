"""The ``compose`` subcommand (torch is imported only when it runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compose`` to the CLI."""
    parser = subparsers.add_parser(
        "compose",
        help="build a CrossLMM checkpoint from a SigLIP and a Qwen2 checkpoint",
        description="Rename a local SigLIP vision checkpoint and a local Qwen2/Qwen2.5 "
        "checkpoint into one CrossLMM checkpoint; projector and DCAL are freshly "
        "initialised (gates 0, so the LLM is unchanged until trained).",
    )
    parser.add_argument("--vision", required=True, help="SigLIP (vision) checkpoint folder")
    parser.add_argument("--llm", required=True, help="Qwen2/Qwen2.5 checkpoint folder")
    parser.add_argument("--out", required=True, help="output checkpoint folder (must not exist)")
    parser.add_argument("--pooled-grid", type=int, default=3, help="g: g*g tokens per frame")
    parser.add_argument("--pool-mode", choices=("bilinear", "avg"), default="bilinear")
    parser.add_argument("--dcal-every", type=int, default=4, help="a DCAL after every K layers")
    parser.add_argument("--v2v-scope", choices=("video", "frame"), default="video")
    parser.add_argument("--dcal-mlp", action="store_true", help="add the gated DCAL MLP")
    parser.add_argument("--vision-feature-layer", type=int, default=-1)
    parser.add_argument("--frames", type=int, default=32, help="default frames per video")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run_compose)
    register_random(subparsers)


def register_random(subparsers: argparse._SubParsersAction) -> None:
    """Add ``random-checkpoint``."""
    parser = subparsers.add_parser(
        "random-checkpoint",
        help="write a random-weight checkpoint of a real model's shape (benchmarks, plans)",
        description="Presets: qwen2.5-0.5b (Qwen2.5-0.5B LLM widths, small SigLIP tower), "
        "crosslmm-2b (the spec's full CrossLMM-2B sizes).",
    )
    parser.add_argument("--preset", required=True, choices=("qwen2.5-0.5b", "crosslmm-2b"))
    parser.add_argument("--out", required=True, help="checkpoint folder to create")
    parser.add_argument("--frames", type=int, default=32, help="default frames per video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run_random)


def run_random(args: argparse.Namespace) -> int:
    """Write the random checkpoint."""
    from .random_model import random_checkpoint

    out = random_checkpoint(args.out, args.preset, args.frames, args.seed, args.force)
    print(f"wrote {out}")
    return 0


def run_compose(args: argparse.Namespace) -> int:
    """Compose and report where the checkpoint went."""
    from .compose import ComposeOptions, compose

    options = ComposeOptions(
        pooled_grid=args.pooled_grid,
        pool_mode=args.pool_mode,
        dcal_every=args.dcal_every,
        v2v_scope=args.v2v_scope,
        dcal_mlp=args.dcal_mlp,
        vision_feature_layer=args.vision_feature_layer,
        num_frames=args.frames,
        seed=args.seed,
    )
    out = compose(args.vision, args.llm, args.out, options, force=args.force)
    print(f"wrote {out}")
    return 0
