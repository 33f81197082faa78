"""A training-only hint: point the T2V cross-attention at the small dot.

Without it, a dot question's answer position starts by attending uniformly
to all T·N memory tokens, so the one token that shows the dot carries 1/512
of the signal and the dot questions stay at chance for thousands of steps.
The hint adds -log(attention mass on the dot's memory token), averaged over
heads, at the answer position of dot questions, in every DCAL. Nothing of it
is saved: the shipped model is the plain spec architecture.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crosslmm_edge.export.reference.dcal import DCAL, CrossKV
from crosslmm_edge.export.reference.model import CrossLMM


class DcalInputs:
    """Records the (module, text part, cross K/V) of every DCAL call while attached."""

    def __init__(self, model: CrossLMM) -> None:
        self.calls: list[tuple[DCAL, Tensor, CrossKV]] = []
        self._handles = [layer.register_forward_hook(self._record) for layer in model.dcal]

    def _record(self, module: nn.Module, args: tuple, output: object) -> None:
        text, _, cross = args
        self.calls.append((module, text, cross))

    def take(self, count: int) -> list[tuple[DCAL, Tensor, CrossKV]]:
        """The last ``count`` calls; forget all."""
        calls, self.calls = self.calls[-count:], []
        return calls

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()


def t2v_probs(layer: DCAL, text: Tensor, key: Tensor) -> Tensor:
    """T2V attention of queries ``text`` [R, D] over ``key`` [R, M, kvh, hd] -> [R, H, M]."""
    attn = layer.t2v_attn
    q = attn.q_proj(layer.t2v_norm(text)).view(text.shape[0], attn.num_heads, attn.head_dim)
    groups = attn.num_heads // attn.num_kv_heads
    k = key.repeat_interleave(groups, dim=2)  # [R, M, H, hd]
    scores = torch.einsum("rhd,rmhd->rhm", q, k) * attn.head_dim**-0.5
    return torch.softmax(scores.float(), dim=-1)


def dot_attention_loss(
    calls: list[tuple[DCAL, Tensor, CrossKV]], rows: Tensor, spots: Tensor, targets: Tensor
) -> Tensor:
    """Mean over DCALs of -log(head-averaged T2V mass on the dot token).

    rows: question rows that ask about the dot [R]; spots: their answer
    positions [R]; targets: the dot's memory index in each row's video [R].
    """
    losses = []
    for layer, text, cross in calls:
        probs = t2v_probs(layer, text[rows, spots], cross.t2v_key[rows])  # [R, H, M]
        mass = probs.mean(1).gather(1, targets[:, None]).squeeze(1)  # [R]
        losses.append(-torch.log(mass + 1e-6).mean())
    return torch.stack(losses).mean()


def dot_memory_index(dot_patch: Tensor, patches_per_frame: int) -> Tensor:
    """dot_patch [B, T] (-1 where no dot) -> memory index of the dot per video [B]."""
    frame = (dot_patch >= 0).int().argmax(1)  # [B]
    patch = dot_patch.gather(1, frame[:, None]).squeeze(1)
    return frame * patches_per_frame + patch
