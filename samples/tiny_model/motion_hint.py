"""A training-only hint: make the visual span itself work out the motion.

Direction questions need the order of frames, which only the visual tokens'
sequence positions carry. Answer-only supervision taught the comparison
slowly (direction under 50 % after 1000 steps). This head reads the LLM's
final hidden state at the pooled tokens of the later frames, which see the
earlier frames through causal self-attention, and predicts the direction
from there; the answer position then only has to read it off. It works once
each pooled token carries the shape's absolute position in its content (see
``AuxHeads``). The head is never saved.
"""

from __future__ import annotations

from torch import Tensor, nn

from crosslmm_edge.calibration.world import synthetic_world as world


class OutputRecorder:
    """Keeps the outputs of one module's calls while attached."""

    def __init__(self, module: nn.Module) -> None:
        self.outputs: list[Tensor] = []
        self._handle = module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.outputs.append(output)

    def take_first(self) -> Tensor:
        """The first recorded output since the last take; forget all."""
        first, self.outputs = self.outputs[0], []
        return first

    def detach(self) -> None:
        self._handle.remove()


class MotionHead(nn.Module):
    """Direction logits from the hidden states of the later frames' pooled tokens."""

    def __init__(self, text_dim: int, first_frame: int = 3) -> None:
        super().__init__()
        self.first_frame = first_frame
        self.classify = nn.Linear(text_dim, len(world.DIRECTIONS))

    def loss(self, hidden: Tensor, text_len: int, tokens_per_frame: int, target: Tensor) -> Tensor:
        """hidden [B, S+Nv, D] of the prefix chunk; target [B] direction index."""
        visual = hidden[:, text_len + self.first_frame * tokens_per_frame :]  # [B, n, D]
        logits = self.classify(visual)  # [B, n, 4]
        repeated = target[:, None].expand(-1, logits.shape[1])
        return nn.functional.cross_entropy(logits.flatten(0, 1), repeated.flatten())
