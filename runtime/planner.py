"""Predict peak memory of a CrossLMM package on a device, and the largest video that fits.

Torch-free, from the model config (and the package's file sizes when given
one). Two models:

- ``cpu``: peak resident memory of the ``ask`` process with ONNX Runtime's
  CPU provider (interpreter and libraries, weights, ONNX Runtime's folded
  copy of a tied LM head, cross K/V while the chunks are joined, the KV
  rows actually touched, the largest activations: the prefill's attention
  scores). Checked against measured ``ask`` runs on this machine.
- GPU (TensorRT engines): weights per graph at the engine precision, the KV
  cache preallocated for the whole context, cross K/V of every frame on the
  device, the engines' activation memory at their profiles' largest points,
  the builder workspace, CUDA/TensorRT context, and on a Jetson the memory
  the OS keeps (CPU and GPU share it). Not measured on a device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backends.trt_profiles import (
    ENCODE_CHUNK_FRAMES,
    OPT_PREFIX_TEXT,
    PREFIX_TEXT_MAX,
    TEXT_CHUNK_MAX,
)
from .errors import UserError
from .inference.generation import (
    DEFAULT_MAX_CHUNK_TOKENS,
    DEFAULT_MAX_SCORE_BYTES,
    largest_visual_piece,
    piece_tokens,
)
from .model.config import CrossLMMConfig
from .package.files import read_json
from .package.manifest import MANIFEST_NAME, load_manifest

GIB = 1 << 30
MIB = 1 << 20
# Measured on the development machine: `ask` on the embedded model, minus what
# this model attributes to it (python, numpy, onnxruntime, tokenizers, av loaded).
PROCESS_BASE = 106 * MIB
DECODE_TOKENS = 64  # KV rows a question and its answer add after the prefix


@dataclass(frozen=True)
class Device:
    """A target: memory, what the system keeps, and whether CPU and GPU share it."""

    name: str
    memory: int
    reserved: int  # OS and desktop (unified memory) or the display (discrete)
    unified: bool
    context: int = 600 * MIB  # CUDA context, cuBLAS/cuDNN/TensorRT libraries, Python


DEVICES = {
    "orin-nano-8gb": Device("Jetson Orin Nano 8 GB", 8 * GIB, int(1.6 * GIB), True),
    "orin-nx-16gb": Device("Jetson Orin NX 16 GB", 16 * GIB, int(1.8 * GIB), True),
    "agx-orin-32gb": Device("Jetson AGX Orin 32 GB", 32 * GIB, 2 * GIB, True),
    "agx-orin-64gb": Device("Jetson AGX Orin 64 GB", 64 * GIB, 2 * GIB, True),
    "rtx-3060-12gb": Device("GeForce RTX 3060 12 GB", 12 * GIB, 300 * MIB, False),
    "rtx-4090-24gb": Device("GeForce RTX 4090 24 GB", 24 * GIB, 300 * MIB, False),
    "a100-40gb": Device("A100 40 GB", 40 * GIB, 0, False),
}
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 1}  # int4: INT8 cross K/V
# The self-attention cache on ONNX Runtime's CPU provider: float activations keep it
# float32 in the fp32 and INT8 graphs; onnx/int4's GroupQueryAttention keeps it float16.
CPU_KV_BYTES = {"fp32": 4, "fp16": 2, "int8": 4, "int4": 2}
# Bytes per LLM matrix weight at int4 (LM head included): 4 bits plus an fp16 scale
# per block of 32 (docs/quantization.md); the vision side is the INT8 recipe's. The
# head's default blocks of 128 hold 0.047 bytes less a weight: an upper bound there.
INT4_MATRIX_BYTES = 0.5 + 2 / 32


@dataclass(frozen=True)
class Shapes:
    """The sizes the plan needs, from a CrossLMM config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    tied: bool
    num_dcal: int
    pooled: int  # P
    patches: int  # N
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers: int
    image_size: int
    patch_size: int
    dcal_mlp: bool

    @classmethod
    def from_config(cls, config: CrossLMMConfig) -> Shapes:
        t, v = config.text_config, config.vision_config
        return cls(
            layers=t.num_hidden_layers,
            heads=t.num_attention_heads,
            kv_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            hidden=t.hidden_size,
            intermediate=t.intermediate_size,
            vocab=t.vocab_size,
            tied=bool(t.tie_word_embeddings),
            num_dcal=config.num_dcal,
            pooled=config.tokens_per_frame,
            patches=v.num_patches,
            vision_hidden=v.hidden_size,
            vision_intermediate=v.intermediate_size,
            vision_heads=v.num_attention_heads,
            vision_layers=v.num_hidden_layers,
            image_size=v.image_size,
            patch_size=v.patch_size,
            dcal_mlp=bool(config.dcal_mlp),
        )


def parameter_counts(s: Shapes) -> dict[str, dict[str, int]]:
    """Per graph: matrix weights (quantizable) and other parameters (norms, biases, tables)."""
    dv, d, q, kv = s.vision_hidden, s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    vision_matrix = s.vision_layers * (4 * dv * dv + 2 * dv * s.vision_intermediate)
    vision_other = 3 * s.patch_size**2 * dv + s.patches * dv + s.vision_layers * 9 * dv
    attn = d * q + 2 * d * kv + q * d
    dcal = s.num_dcal * (2 * (d * q + q * d) + (3 * d * s.intermediate if s.dcal_mlp else 0))
    llm_matrix = s.layers * (attn + 3 * d * s.intermediate) + dcal
    llm_other = s.vocab * d + s.layers * (q + 2 * kv + 2 * d) + s.num_dcal * 4 * d
    lm_head = 0 if s.tied else s.vocab * d
    pooling_matrix = dv * d + d * d + s.num_dcal * 2 * 2 * d * kv
    return {
        "vision_encoder": {"matrix": vision_matrix, "other": vision_other},
        "pooling": {"matrix": pooling_matrix, "other": 2 * d + s.num_dcal * 4 * kv},
        "llm": {"matrix": llm_matrix + lm_head, "other": llm_other},
    }


def weight_bytes(s: Shapes, precision: str, file_sizes: dict[str, int] | None = None) -> dict:
    """Bytes of weights per graph; a tied LM head is a second (transposed) copy at run time."""
    matrix_bytes = PRECISION_BYTES[precision]
    other_bytes = 4 if precision == "fp32" else 2  # INT8 keeps norms, biases, tables in fp16
    counts = parameter_counts(s)
    sizes = {
        role: c["matrix"] * matrix_bytes + c["other"] * other_bytes for role, c in counts.items()
    }
    if precision == "int4":  # 4-bit decoder, DCAL and head weights
        sizes["llm"] = int(counts["llm"]["matrix"] * INT4_MATRIX_BYTES)
        sizes["llm"] += counts["llm"]["other"] * other_bytes
    if file_sizes:
        sizes.update(file_sizes)
    if s.tied:  # ONNX Runtime folds Transpose(embedding); TensorRT keeps a GEMM copy
        head_bytes = INT4_MATRIX_BYTES if precision == "int4" else matrix_bytes
        sizes["llm_head_copy"] = int(s.vocab * s.hidden * head_bytes)
    return sizes


def cross_bytes(s: Shapes, frames: int, itemsize: int) -> int:
    """V2V and T2V keys and values of every DCAL for ``frames`` frames."""
    return s.num_dcal * 4 * frames * s.patches * s.kv_heads * s.head_dim * itemsize


def kv_bytes(s: Shapes, positions: int, itemsize: int) -> int:
    """Self-attention keys and values of every layer for ``positions`` positions."""
    return s.layers * 2 * positions * s.kv_heads * s.head_dim * itemsize


def attention_bytes(s: Shapes, text: int, visual: int, past: int, memory: int) -> int:
    """Scores (float32, softmax in place) of the largest attention in one LLM chunk."""
    seq = text + visual
    self_attention = s.heads * seq * (past + seq)
    cross = s.heads * max(text * memory, visual * memory)
    return 4 * max(self_attention, cross)


def llm_activation_bytes(s: Shapes, text: int, visual: int, past: int, memory: int, item: int):
    """Peak activations of one LLM chunk: attention scores, the MLP, hidden states."""
    seq = text + visual
    mlp = 3 * seq * s.intermediate * item
    hidden = 6 * seq * s.hidden * item
    return attention_bytes(s, text, visual, past, memory) + mlp + hidden + s.vocab * 4


def vision_activation_bytes(s: Shapes, frames: int, item: int) -> int:
    """Peak activations of the vision encoder and pooling on ``frames`` frames."""
    n = s.patches
    scores = 4 * frames * s.vision_heads * n * n
    mlp = frames * n * s.vision_intermediate * item
    pooled = cross_bytes(s, frames, item) + frames * s.pooled * s.hidden * item
    return scores + mlp + 4 * frames * n * s.vision_hidden * item + pooled


@dataclass(frozen=True)
class Model:
    """What ``plan --model`` names: a config, and the package's ONNX file sizes if any."""

    config: CrossLMMConfig
    file_sizes: dict[str, dict[str, int]]  # precision -> role -> bytes (ONNX artifacts)


def load_model(path: str | Path) -> Model:
    """A package folder, a checkpoint folder or a config.json (torch-free)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        manifest = load_manifest(path)
        sizes: dict[str, dict[str, int]] = {}
        for role, graph in manifest.graphs.items():
            for a in graph.artifacts:
                if a.backend == "onnx":
                    total = sum((path / ref.file).stat().st_size for ref in a.files())
                    sizes.setdefault(a.precision, {})[role] = total
        return Model(CrossLMMConfig.from_dict(manifest.model_config), sizes)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UserError(f"{path}: neither a package, a checkpoint folder nor a config.json")
    return Model(CrossLMMConfig.from_dict(read_json(config_file)), {})


@dataclass(frozen=True)
class Prediction:
    """Bytes by component, their sum, and the device's budget."""

    parts: dict[str, int]
    budget: int

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget


def predict_cpu(model: Model, frames: int, context: int, precision: str) -> Prediction:
    """Peak RSS of ``ask`` on ONNX Runtime's CPU provider (budget: this machine's RAM)."""
    s, item = Shapes.from_config(model.config), PRECISION_BYTES[precision]
    weights = weight_bytes(s, precision, model.file_sizes.get(precision))
    visual = frames * s.pooled
    cross = cross_bytes(s, frames, item)
    # onnx/int4 binds the INT8 memory dequantized: a float32 copy beside the state's
    bound = cross_bytes(s, frames, 4) if precision == "int4" else 0
    vision = vision_activation_bytes(s, min(frames, ENCODE_CHUNK_FRAMES), 4)
    # The two phases do not overlap: encoding holds the encoded chunks and their
    # joined copy; prefill holds the joined cross K/V, the KV rows and the LLM's
    # activations. ONNX Runtime's arenas keep the vision activations in both.
    encode = 2 * cross + frames * 3 * s.image_size**2 * 4
    prefill = (
        cross
        + bound
        + kv_bytes(s, visual + OPT_PREFIX_TEXT + DECODE_TOKENS, CPU_KV_BYTES[precision])
        + _prefill_piece_bytes(s, OPT_PREFIX_TEXT, visual, frames * s.patches)
    )
    parts = {
        "interpreter and libraries": PROCESS_BASE,
        "weights": sum(weights.values()),
        "vision activations": vision,
        "encode or prefill (the larger)": max(encode, prefill),
    }
    return Prediction(parts, _host_memory())


def _prefill_piece_bytes(s: Shapes, text: int, visual: int, memory: int) -> int:
    """Activations of the largest piece ``Pipeline.prefill`` runs the video prefix in."""
    limit = max(DEFAULT_MAX_CHUNK_TOKENS, s.pooled)
    piece = piece_tokens(s.heads, text + visual, memory, limit, DEFAULT_MAX_SCORE_BYTES)
    if text + visual <= piece:  # one run, as the runtime does it
        return llm_activation_bytes(s, text, visual, 0, memory, 4)
    frames = max(1, piece // s.pooled)  # visual pieces are whole frames
    return llm_activation_bytes(s, 0, min(visual, frames * s.pooled), text + visual, memory, 4)


def _host_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def predict_gpu(
    model: Model, device: Device, frames: int, context: int, precision: str, workspace: int
) -> Prediction:
    """Peak device memory with TensorRT engines built for ``frames`` and ``context``."""
    s = Shapes.from_config(model.config)
    item = 2  # activations, KV and cross K/V stay fp16 in fp16 and INT8 engines
    visual, memory = frames * s.pooled, frames * s.patches
    prefix = min(PREFIX_TEXT_MAX, context - visual)
    frame_scope = model.config.v2v_scope == "frame"
    piece = largest_visual_piece(s.heads, s.pooled, s.patches, frames, frame_scope)  # build's cap
    llm = max(
        llm_activation_bytes(s, prefix, piece, context - s.pooled, memory, item),
        llm_activation_bytes(s, min(TEXT_CHUNK_MAX, context), 0, context - 1, memory, item),
    )
    parts = {
        "weights": sum(weight_bytes(s, precision).values()),
        "KV cache": kv_bytes(s, context, item),
        "cross K/V": cross_bytes(s, frames, item) + visual * s.hidden * item,
        "activations": llm + vision_activation_bytes(s, min(frames, ENCODE_CHUNK_FRAMES), item),
        "workspace": workspace,
        "CUDA, TensorRT, Python": device.context,
    }
    if device.unified:
        parts["system (shared memory)"] = device.reserved
    budget = device.memory if device.unified else device.memory - device.reserved
    return Prediction(parts, budget)


Predict = Callable[[int, int], Prediction]


def predictor(model: Model, device: str, precision: str, workspace: int) -> Predict:
    """``(frames, context) -> Prediction`` for a device name (``cpu`` or one of DEVICES)."""
    if device == "cpu":
        return lambda frames, context: predict_cpu(model, frames, context, precision)
    if device not in DEVICES:
        raise UserError(f"--device {device!r}: expected cpu or one of {', '.join(DEVICES)}")
    target = DEVICES[device]
    return lambda f, c: predict_gpu(model, target, f, c, precision, workspace)


def largest_frames(model: Model, predict: Predict, context: int, limit: int = 1024) -> int:
    """Most frames that fit at ``context`` (0: not even one)."""
    pooled = model.config.tokens_per_frame
    best = 0
    for frames in range(1, limit + 1):
        if frames * pooled >= context or not predict(frames, context).fits:
            break
        best = frames
    return best
