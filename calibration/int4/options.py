"""The INT4 options a user chooses, without onnx: the CLI builds its parser from them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ...runtime.errors import UserError

if TYPE_CHECKING:
    from .block_quant import BlockScheme

BLOCK_SIZES = (32, 64, 128)  # weights per scale along K
HEAD_CHOICES = ("float", "int8", "int4")
ALGORITHMS = ("rtn", "awq", "hqq", "gptq")
# Decoder self-attention of onnx/int4: ONNX Runtime's fused GroupQueryAttention with an
# in-place head-major cache, or the exported standard ops (export/graphs/ort_attention.py).
ATTENTION_CHOICES = ("gqa", "standard")
# Element type of that op's KV cache (export/graphs/ort_half_cache.py).
KV_CACHE_CHOICES = ("float32", "float16")


@dataclass(frozen=True)
class Int4Options:
    """How the LLM's weights become 4-bit: blocks, algorithm, LM head, wider groups."""

    block_size: int = 32
    symmetric: bool = True
    # Defaults chosen by measurement (docs/quantization.md): AWQ beat RTN on the logits;
    # an INT4 head reads half the bytes of an INT8 one, ran up to 2x faster and changed
    # no answer of the embedded model; the embedding costs no decode time, so INT4
    # there buys bytes only. Both take the 0.5B-shaped LLM to 0.2x of FP32.
    algorithm: str = "awq"
    head: str = "int4"
    embedding: str = "int4"
    attention: str = "gqa"
    # The head's own block size (docs/quantization.md): ONNX Runtime's 8-bit-activation
    # MatMulNBits kernel spends most of a block-32 head on per-block work, not on bytes.
    head_block_size: int = 128
    # None: float16 for GroupQueryAttention (a long-context step reads half the bytes;
    # docs/performance-int4.md), float32 for the standard ops, which keep the export's.
    kv_cache: str | None = None
    wider: tuple[tuple[str, str], ...] = ()  # (layer group, "int8" or "float")
    search: dict | None = field(default=None, compare=False)

    def check(self) -> None:
        """A ``UserError`` for a block size, algorithm or head storage we do not write."""
        if self.block_size not in BLOCK_SIZES:
            raise UserError(f"--block-size {self.block_size}: choose one of {BLOCK_SIZES}")
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"--algorithm {self.algorithm}: choose one of {ALGORITHMS}")
        if self.head_block_size not in BLOCK_SIZES:
            raise UserError(
                f"--head-block-size {self.head_block_size}: choose one of {BLOCK_SIZES}"
            )
        if self.head not in HEAD_CHOICES:
            raise UserError(f"--head {self.head}: choose one of {HEAD_CHOICES}")
        if self.embedding not in HEAD_CHOICES:
            raise UserError(f"--embedding {self.embedding}: choose one of {HEAD_CHOICES}")
        if self.attention not in ATTENTION_CHOICES:
            raise UserError(f"--attention {self.attention}: choose one of {ATTENTION_CHOICES}")
        if self.kv_cache not in (None, *KV_CACHE_CHOICES):
            raise UserError(f"--kv-cache {self.kv_cache}: choose one of {KV_CACHE_CHOICES}")
        if self.kv_cache == "float16" and self.attention != "gqa":
            raise UserError("--kv-cache float16 needs --attention gqa")

    @property
    def cache_type(self) -> str:
        """The element type of the LLM's self-attention cache these options give."""
        if self.kv_cache is not None:
            return self.kv_cache
        return "float16" if self.attention == "gqa" else "float32"

    def scheme(self, bits: int) -> BlockScheme:
        """The block scheme of a weight stored at ``bits`` under these options (HQQ's
        4-bit blocks carry zero points; the embedding table makes its own symmetric)."""
        from .block_quant import BlockScheme  # onnx: imported only when quantizing

        hqq = self.algorithm == "hqq" and bits == 4
        return BlockScheme(bits, self.block_size, self.symmetric and not hqq)

    def head_scheme(self) -> BlockScheme:
        """The LM head's block scheme: its storage's bits, the head's own block size."""
        storage = self.scheme(8 if self.head == "int8" else 4)
        return replace(storage, block_size=self.head_block_size)
