"""Train the tiny CrossLMM that ships as the embedded default model.

Seeded; a re-run reproduces the accuracy, though not bit for bit (the step-0
loss differs in its 7th digit between processes). On 2 shared CPU cores the
default settings take about 18 minutes on 1 torch thread; see docs/tiny-model.md.

    python samples/train_tiny_model.py --out /tmp/tiny --log /tmp/tiny.jsonl
    python samples/train_tiny_model.py --out /tmp/tiny-nodcal --no-dcal   # ablation
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tiny_model.data import PromptTokens, build_pool
from tiny_model.model_setup import NUM_FRAMES, init_weights, tiny_config
from tiny_model.saving import save_tiny_checkpoint
from tiny_model.tokenizer import build_tokenizer, token_id
from tiny_model.training import TrainSettings, json_logger, train

from crosslmm_edge.export.reference.model import build_model


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--log", help="append the training curve here as JSON lines")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="init and batch order")
    parser.add_argument(
        "--data-seed", type=int, default=0, help="synthetic stream of training videos"
    )
    parser.add_argument("--val-seed", type=int, default=2, help="stream of validation videos")
    parser.add_argument("--videos", type=int, default=6000, help="training videos rendered")
    parser.add_argument("--val-videos", type=int, default=256)
    parser.add_argument("--mp4-every", type=int, default=4, help="round-trip every k-th video")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="videos per step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--aux-weight", type=float, default=defaults.aux_weight)
    parser.add_argument(
        "--hint-weight",
        type=float,
        default=defaults.hint_weight,
        help="weight of the dot attention hint (0: off)",
    )
    parser.add_argument(
        "--motion-weight",
        type=float,
        default=defaults.motion_weight,
        help="weight of the motion head on the visual span (0: off)",
    )
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (results depend on it)"
    )
    parser.add_argument("--no-dcal", action="store_true", help="ablation: DCAL gates held at 0")
    return parser.parse_args()


def main() -> None:
    """Render data, train, save the checkpoint."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    config = tiny_config(
        vocab_size=tokenizer.get_vocab_size(),
        video_token_id=token_id(tokenizer, "<|video_pad|>"),
        eos_token_id=token_id(tokenizer, "<|im_end|>"),
    )
    model = build_model(config)
    init_weights(model)
    started = time.time()
    pool = build_pool(args.data_seed, args.videos, NUM_FRAMES, args.mp4_every)
    val_pool = build_pool(args.val_seed, args.val_videos, NUM_FRAMES)
    print(
        f"rendered {len(pool)} + {len(val_pool)} videos in {time.time() - started:.0f} s",
        flush=True,
    )
    settings = TrainSettings(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        aux_weight=args.aux_weight,
        hint_weight=args.hint_weight,
        motion_weight=args.motion_weight,
        eval_every=args.eval_every,
        no_dcal=args.no_dcal,
        seed=args.seed,
    )
    train(model, PromptTokens(tokenizer), pool, val_pool, settings, json_logger(args.log))
    save_tiny_checkpoint(model, tokenizer, args.out)
    print(f"saved {args.out} after {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
