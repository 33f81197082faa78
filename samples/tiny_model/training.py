"""Losses, validation and the optimisation loop of the tiny model."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crosslmm_edge.calibration.world import synthetic_world as world
from crosslmm_edge.export.reference.model import CrossLMM
from tiny_model.attention_hint import DcalInputs, dot_attention_loss, dot_memory_index
from tiny_model.data import PromptTokens, VideoPool, to_pixels
from tiny_model.model_setup import AuxHeads, answer_logits, encode_videos
from tiny_model.motion_hint import MotionHead, OutputRecorder


@dataclass
class TrainSettings:
    """Hyper-parameters; the defaults are the shipped model's."""

    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    gate_lr_scale: float = 10.0
    warmup: int = 100
    aux_weight: float = 0.5
    hint_weight: float = 0.5
    motion_weight: float = 0.5
    eval_every: int = 250
    no_dcal: bool = False
    seed: int = 0


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 5 %."""
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(settings.steps - settings.warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(
    model: CrossLMM, heads: nn.Module, settings: TrainSettings
) -> torch.optim.Optimizer:
    """AdamW; the DCAL gates learn faster (or are frozen at 0 for the ablation)."""
    gates, decay, plain = [], [], []
    for name, param in model.named_parameters():
        if name.endswith("_gate"):
            param.requires_grad_(not settings.no_dcal)
            gates.append(param)
        elif param.ndim >= 2:
            decay.append(param)
        else:
            plain.append(param)
    plain += list(heads.parameters())
    groups = [
        {"params": decay, "weight_decay": 0.01, "scale": 1.0},
        {"params": plain, "weight_decay": 0.0, "scale": 1.0},
        {"params": gates, "weight_decay": 0.0, "scale": settings.gate_lr_scale},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98))


def aux_loss(
    heads: AuxHeads, pool: VideoPool, idx: Tensor, features: Tensor, pooled: Tensor
) -> Tensor:
    """Colour/shape/position from each pooled token; per-patch dot colour from all tokens."""
    frames = pool.frame_x.shape[1]
    per_frame = pooled.shape[1]
    frame_logits, patch_logits = heads(pooled, features)
    targets = [
        pool.answers["colour"][idx].repeat_interleave(frames),
        pool.answers["shape"][idx].repeat_interleave(frames) - len(world.COLOURS),
        pool.frame_x[idx].flatten(),
        pool.frame_y[idx].flatten(),
    ]  # each [B·T]
    loss = sum(
        nn.functional.cross_entropy(lg, tg.repeat_interleave(per_frame))
        for lg, tg in zip(frame_logits, targets, strict=True)
    )
    dot_patch = pool.dot_patch[idx].flatten()  # [B·T], -1 when the frame has no dot
    patch_target = torch.zeros(patch_logits.shape[:2], dtype=torch.long)  # [B·T, N]
    shown = dot_patch >= 0
    dot_colour = pool.answers["dot"][idx].repeat_interleave(frames)
    patch_target[shown, dot_patch[shown]] = dot_colour[shown] + 1
    loss = loss + nn.functional.cross_entropy(patch_logits.flatten(0, 1), patch_target.flatten())
    has_dot = patch_target > 0
    return loss + nn.functional.cross_entropy(patch_logits[has_dot], patch_target[has_dot])


def qa_forward(
    model: CrossLMM, prompts: PromptTokens, pool: VideoPool, idx: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, list[str], Tensor, Tensor, Tensor, Tensor]:
    """Run the videos ``idx`` and all their questions.

    Returns chunk logits [B·Q, L, V], chunk ids, row numbers, question types,
    answer positions, answer ids, vision features and pooled tokens.
    """
    features, pooled, embeds, cross = encode_videos(model, to_pixels(pool.frames[idx]))
    answers = {q: v[idx] for q, v in pool.answers.items()}
    ids, spots, targets, types = prompts.qa_batch(answers, generator)
    logits = answer_logits(model, prompts.prefix, embeds, cross, ids)  # [B·Q, L, V]
    rows = torch.arange(ids.shape[0])
    return logits, ids, rows, types, spots, targets, features, pooled


@torch.no_grad()
def validate(model: CrossLMM, prompts: PromptTokens, pool: VideoPool) -> dict[str, float]:
    """Greedy first-answer-token accuracy per question type on ``pool``."""
    generator = torch.Generator().manual_seed(1234)
    hits = {q: 0 for q in world.QUESTION_TYPES}
    counts = dict.fromkeys(hits, 0)
    for start in range(0, len(pool), 64):
        idx = torch.arange(start, min(start + 64, len(pool)))
        logits, _, rows, types, spots, targets, _, _ = qa_forward(
            model, prompts, pool, idx, generator
        )
        chosen = logits[rows, spots].argmax(-1)
        for qtype, ok in zip(types, (chosen == targets).tolist(), strict=True):
            hits[qtype] += ok
            counts[qtype] += 1
    per_type = {q: hits[q] / counts[q] for q in hits}
    per_type["overall"] = sum(hits.values()) / sum(counts.values())
    return per_type


class BatchOrder:
    """Shuffled epochs over the pool; the same generator also picks phrasings."""

    def __init__(self, size: int, batch: int, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.size, self.batch = size, batch
        self.perm, self.cursor = torch.randperm(size, generator=self.generator), 0

    def next(self) -> Tensor:
        """Indices of the next batch of videos [B]."""
        if self.cursor + self.batch > self.size:
            self.perm, self.cursor = torch.randperm(self.size, generator=self.generator), 0
        idx = self.perm[self.cursor : self.cursor + self.batch]
        self.cursor += self.batch
        return idx


@dataclass
class TrainingParts:
    """Training-only heads and the hooks that feed them (none of it is saved)."""

    heads: AuxHeads
    motion: MotionHead
    final_norm: OutputRecorder
    dcal_inputs: DcalInputs | None

    def detach(self) -> None:
        self.final_norm.detach()
        if self.dcal_inputs is not None:
            self.dcal_inputs.detach()


def step_losses(
    model: CrossLMM,
    parts: TrainingParts,
    prompts: PromptTokens,
    pool: VideoPool,
    idx: Tensor,
    order: torch.Generator,
    settings: TrainSettings,
) -> dict[str, Tensor]:
    """Every loss of one batch; ``"loss"`` is their weighted sum."""
    parts.final_norm.outputs = []  # drop what validation recorded
    logits, ids, rows, types, spots, targets, features, pooled = qa_forward(
        model, prompts, pool, idx, order
    )
    qa = nn.functional.cross_entropy(logits[rows, spots], targets)
    qa = qa + nn.functional.cross_entropy(logits[rows, spots + 1], ids[rows, spots + 2])
    aux = aux_loss(parts.heads, pool, idx, features, pooled)
    losses = {"qa_loss": qa, "aux_loss": aux}
    loss = qa + settings.aux_weight * aux
    if settings.motion_weight:
        direction = pool.answers["direction"][idx] - len(world.COLOURS) - len(world.SHAPES)
        hidden = parts.final_norm.take_first()  # the prefix chunk's [B, S+Nv, D]
        motion = parts.motion.loss(
            hidden, len(prompts.prefix), model.config.tokens_per_frame, direction
        )
        losses["motion_loss"] = motion
        loss = loss + settings.motion_weight * motion
    if parts.dcal_inputs is not None:
        hint = dot_hint(parts.dcal_inputs, model, pool, idx, types, spots)
        losses["hint_loss"] = hint
        loss = loss + settings.hint_weight * hint
    losses["loss"] = loss
    return losses


def progress_entry(step: int, losses: dict[str, Tensor], started: float) -> dict:
    """The logged line of one step: its losses and the time since the start."""
    entry = {
        "step": step,
        "loss": losses["loss"].item(),
        "qa_loss": losses["qa_loss"].item(),
        "aux_loss": losses["aux_loss"].item(),
        "elapsed_s": round(time.time() - started, 1),
    }
    for name in ("hint_loss", "motion_loss"):
        if name in losses:
            entry[name] = losses[name].item()
    return entry


def gate_values(model: CrossLMM) -> list[float]:
    """tanh of every DCAL gate, rounded."""
    return [
        round(math.tanh(p.item()), 3) for n, p in model.named_parameters() if n.endswith("_gate")
    ]


def train(
    model: CrossLMM,
    prompts: PromptTokens,
    pool: VideoPool,
    val_pool: VideoPool,
    settings: TrainSettings,
    log: Callable[[dict], None],
) -> list[dict]:
    """Optimise ``model`` in place; return the logged curve."""
    torch.manual_seed(settings.seed)
    heads = AuxHeads(model.config.vision_config.hidden_size)
    motion = MotionHead(model.config.text_config.hidden_size)
    optimizer = make_optimizer(model, nn.ModuleList([heads, motion]), settings)
    parts = TrainingParts(
        heads,
        motion,
        OutputRecorder(model.language_model.model.norm),
        DcalInputs(model) if settings.hint_weight else None,
    )
    order = BatchOrder(len(pool), settings.batch, settings.seed)
    curve, started = [], time.time()
    model.train()
    for step in range(settings.steps):
        idx = order.next()
        losses = step_losses(model, parts, prompts, pool, idx, order.generator, settings)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * group["scale"] * lr_factor(step, settings)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last = step == settings.steps - 1
        if step % 25 == 0 or last:
            entry = progress_entry(step, losses, started)
            if step % settings.eval_every == 0 or last:
                model.eval()
                entry["val"] = validate(model, prompts, val_pool)
                entry["gates"] = gate_values(model)
                model.train()
            curve.append(entry)
            log(entry)
    parts.detach()
    model.eval()
    return curve


def dot_hint(
    dcal_inputs: DcalInputs,
    model: CrossLMM,
    pool: VideoPool,
    idx: Tensor,
    types: list[str],
    spots: Tensor,
) -> Tensor:
    """The attention hint of the dot questions of the last ``qa_forward``."""
    calls = dcal_inputs.take(model.config.num_dcal)  # the question chunk's DCAL calls
    per_video = len(types) // len(idx)
    dot_rows = torch.tensor([i for i, qtype in enumerate(types) if qtype == "dot"])
    memory_index = dot_memory_index(pool.dot_patch[idx], model.config.vision_config.num_patches)
    return dot_attention_loss(calls, dot_rows, spots[dot_rows], memory_index[dot_rows // per_video])


def json_logger(path: str | None) -> Callable[[dict], None]:
    """Print each entry, and append it to ``path`` as a JSON line when given."""

    def log(entry: dict) -> None:
        line = json.dumps(entry)
        print(line, flush=True)
        if path:
            with open(path, "a") as handle:
                handle.write(line + "\n")

    return log
