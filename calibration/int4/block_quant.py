"""Block-wise weight-only quantization of a MatMul's weight: 4 or 8 bits, block along K.

A weight ``W [K, N]`` is cut into blocks of ``block_size`` rows of one column;
each block has its own scale (and, asymmetric, a zero point), as ONNX opset
21's blocked ``DequantizeLinear`` (``axis=0, block_size``) reads them:
``x [K, N]`` int4/uint4 (or int8/uint8), ``scale [ceil(K/B), N]``. The graph
form is that ``DequantizeLinear`` feeding the ``MatMul``'s weight input,
standard ONNX that TensorRT 10 parses for INT4 weight-only quantization and
that ONNX Runtime fuses into its ``MatMulNBits`` kernel.

Symmetric blocks use [-7, 7] (scale = max|w| / 7: zero stays exact and the
grid is the same on both sides; TensorRT requires a zero point of 0), asymmetric
ones [0, 15] with a zero point (ONNX Runtime only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from onnx import NodeProto, TensorProto, helper, numpy_helper

OPSET = 21  # the first opset with blocked DequantizeLinear and int4 tensors


@dataclass(frozen=True)
class BlockScheme:
    """How weights are stored: bits, block size along K, symmetric or with zero points."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True

    @property
    def levels(self) -> tuple[int, int]:
        """(lowest, highest) stored integer."""
        if self.symmetric:
            top = 2 ** (self.bits - 1) - 1
            return -top, top
        return 0, 2**self.bits - 1

    @property
    def onnx_type(self) -> int:
        table = {
            (4, True): TensorProto.INT4,
            (4, False): TensorProto.UINT4,
            (8, True): TensorProto.INT8,
            (8, False): TensorProto.UINT8,
        }
        return table[(self.bits, self.symmetric)]

    def describe(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric (zero points)"
        return f"int{self.bits} blocks of {self.block_size} along K, {kind}, float scales"


@dataclass
class BlockWeight:
    """A quantized weight: integers [K, N], scales [blocks, N], zero points or None."""

    values: np.ndarray  # int16 holding the stored integers
    scales: np.ndarray  # float32
    zero_points: np.ndarray | None  # int16, asymmetric only

    def dequantize(self, block_size: int) -> np.ndarray:
        """The float weight these blocks stand for."""
        rows = self.values.shape[0]
        scales = np.repeat(self.scales, block_size, axis=0)[:rows]
        values = self.values.astype(np.float32)
        if self.zero_points is not None:
            values -= np.repeat(self.zero_points, block_size, axis=0)[:rows]
        return values * scales


def blocked_rows(weight: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] -> [blocks, block_size, N], zero-padded along K."""
    rows, cols = weight.shape
    blocks = -(-rows // block_size)
    padded = np.zeros((blocks * block_size, cols), np.float32)
    padded[:rows] = weight
    return padded.reshape(blocks, block_size, cols)


def block_params(blocks: np.ndarray, scheme: BlockScheme) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales [nb, N] and, asymmetric, zero points [nb, N] of ``blocks [nb, B, N]``."""
    low, high = scheme.levels
    if scheme.symmetric:
        scales = np.abs(blocks).max(axis=1) / high
        return np.where(scales > 0, scales, 1.0).astype(np.float32), None
    lo = np.minimum(blocks.min(axis=1), 0.0)
    hi = np.maximum(blocks.max(axis=1), 0.0)
    scales = ((hi - lo) / (high - low)).astype(np.float32)
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    return scales, np.clip(np.rint(-lo / scales), low, high).astype(np.int16)


def round_to_grid(
    values: np.ndarray, scales: np.ndarray, zero: np.ndarray | None, scheme: BlockScheme
) -> np.ndarray:
    """The stored integers of ``values`` on the grid ``scales`` (and ``zero``) broadcast to."""
    low, high = scheme.levels
    rounded = np.rint(values / scales)
    return np.clip(rounded if zero is None else rounded + zero, low, high)


def quantize_weight(weight: np.ndarray, scheme: BlockScheme) -> BlockWeight:
    """Round-to-nearest block quantization of ``weight [K, N]``."""
    rows = weight.shape[0]
    blocks = blocked_rows(np.asarray(weight, np.float32), scheme.block_size)
    scales, zero = block_params(blocks, scheme)
    values = round_to_grid(blocks, scales[:, None], None if zero is None else zero[:, None], scheme)
    flat = values.reshape(-1, weight.shape[1])[:rows].astype(np.int16)
    return BlockWeight(flat, scales, zero)


def _packed(values: np.ndarray, bits: int) -> bytes:
    """Row-major integers as ONNX stores them: 4-bit pairs low nibble first."""
    flat = values.astype(np.int16).ravel()
    if bits == 8:
        return flat.astype(np.int8 if flat.min() < 0 else np.uint8).tobytes()
    nibbles = (flat & 0x0F).astype(np.uint8)
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def integer_tensor(name: str, values: np.ndarray, scheme: BlockScheme) -> TensorProto:
    """An int4/uint4/int8/uint8 initializer holding ``values``."""
    raw = _packed(values, scheme.bits)
    return helper.make_tensor(name, scheme.onnx_type, list(values.shape), raw, raw=True)


def block_names(weight_name: str, bits: int) -> tuple[str, str, str]:
    """The initializers ``dequantize_node`` writes for ``weight_name``: values, scales and
    zero points."""
    stem = f"{weight_name}_q{bits}"
    return stem, f"{stem}_scale", f"{stem}_zero_point"


def relative_error(exact: np.ndarray, approx: np.ndarray) -> float:
    """``|exact - approx|² / |exact|²``: how far a quantized product is from the float one."""
    return float(np.square(exact - approx).sum() / max(np.square(exact).sum(), 1e-30))


def dequantize_node(
    weight_name: str, block: BlockWeight, scheme: BlockScheme, scale_dtype: npt.DTypeLike
) -> tuple[list[TensorProto], NodeProto, str]:
    """Initializers and the blocked ``DequantizeLinear`` node that rebuild ``weight_name``.

    Returns (initializers, node, the node's output name).
    """
    stem, scale_name, zero_name = block_names(weight_name, scheme.bits)
    # fp16 scales stay normal numbers (a flushed scale would zero its block)
    scales = np.maximum(block.scales, np.finfo(scale_dtype).tiny).astype(scale_dtype)
    per_channel = len(scales) == 1  # one block spans K: the per-channel form
    tensors = [
        integer_tensor(stem, block.values, scheme),
        numpy_helper.from_array(scales[0] if per_channel else scales, scale_name),
    ]
    inputs = [tensors[0].name, tensors[1].name]
    if block.zero_points is not None:
        zero_points = block.zero_points[0] if per_channel else block.zero_points
        tensors.append(integer_tensor(zero_name, zero_points, scheme))
        inputs.append(tensors[2].name)
    output = f"{stem}_dequantized"
    node = helper.make_node("DequantizeLinear", inputs, [output], name=f"{stem}_DequantizeLinear")
    node.attribute.append(helper.make_attribute("axis", 1 if per_channel else 0))
    if not per_channel:
        node.attribute.append(helper.make_attribute("block_size", scheme.block_size))
    return tensors, node, output


def stored_block(model_inits: dict[str, TensorProto], weight_name: str) -> BlockWeight | None:
    """The symmetric 4-bit blocks ``dequantize_node`` wrote for ``weight_name``, read back
    (None when it wrote none, or with zero points)."""
    values_name, scale_name, zero_name = block_names(weight_name, 4)
    values, scales = model_inits.get(values_name), model_inits.get(scale_name)
    if values is None or scales is None or zero_name in model_inits:
        return None
    integers = numpy_helper.to_array(values).astype(np.int8)  # [K, N], unpacked
    found = numpy_helper.to_array(scales).astype(np.float32)
    return BlockWeight(integers, found.reshape(-1, integers.shape[1]), None)  # [blocks, N]
