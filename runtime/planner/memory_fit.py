"""Peak-memory predictions of ``crosslmm-edge plan``, and the largest video that fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..backends.trt_profiles import (
    ENCODE_CHUNK_FRAMES,
    OPT_PREFIX_TEXT,
    PREFIX_TEXT_MAX,
    TEXT_CHUNK_MAX,
)
from ..errors import UserError
from ..inference.generation import (
    DEFAULT_MAX_CHUNK_TOKENS,
    DEFAULT_MAX_SCORE_BYTES,
    largest_visual_piece,
    piece_tokens,
)
from ..model.config import CrossLMMConfig
from ..package.files import read_json
from ..package.manifest import MANIFEST_NAME, load_manifest
from .memory_plan import (
    DECODE_TOKENS,
    DEVICES,
    PRECISION_BYTES,
    PROCESS_BASE,
    Device,
    Shapes,
    cross_bytes,
    kv_bytes,
    llm_activation_bytes,
    vision_activation_bytes,
    weight_bytes,
)


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
    vision = vision_activation_bytes(s, min(frames, ENCODE_CHUNK_FRAMES), 4)
    # The two phases do not overlap: encoding holds the encoded chunks and their
    # joined copy; prefill holds the joined cross K/V, the KV rows and the LLM's
    # activations. ONNX Runtime's arenas keep the vision activations in both.
    encode = 2 * cross + frames * 3 * s.image_size**2 * 4
    prefill = (
        cross
        + kv_bytes(s, visual + OPT_PREFIX_TEXT + DECODE_TOKENS, item)
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
