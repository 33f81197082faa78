"""Open the right assistant for a model path (checkpoint folder or package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .runtime.chat.assistant_types import Assistant
from .runtime.errors import UserError

# Options that choose artifacts of a package; a checkpoint has none.
RUNTIME_OPTIONS = ("provider", "precision", "backend")


def is_checkpoint(folder: Path) -> bool:
    """A CrossLMM checkpoint: config.json with model_type crosslmm and safetensors."""
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    weights = (folder / "model.safetensors", folder / "model.safetensors.index.json")
    return kind == "crosslmm" and any(p.is_file() for p in weights)


def open_assistant(model_path: str, **kwargs: Any) -> Assistant:
    """An ``Assistant`` for ``model_path``.

    A checkpoint folder gets the PyTorch reference (torch imported only
    here); a package folder (``manifest.json``) gets the torch-free runtime.
    ``kwargs`` (``max_context``, ``system``) go to the assistant; the
    runtime-only ones (``provider``, ``precision``, ``backend``) only to the runtime.
    """
    folder = Path(model_path)
    if not folder.is_dir():
        raise UserError(f"{folder}: model folder not found")
    given = {name: kwargs.pop(name, None) for name in RUNTIME_OPTIONS}
    runtime_only = {name: value for name, value in given.items() if value is not None}
    if (folder / "manifest.json").is_file():
        from .runtime.chat.assistant import RuntimeAssistant

        return RuntimeAssistant(folder, **runtime_only, **kwargs)
    if {k: v for k, v in runtime_only.items() if (k, v) != ("backend", "onnx")}:
        names = ", ".join(f"--{name}" for name in runtime_only)
        raise UserError(f"{names} apply to packages only; {folder} is not one")
    if is_checkpoint(folder):
        from .export.reference.reference_assistant import ReferenceAssistant

        return ReferenceAssistant(folder, **kwargs)
    if (folder / "config.json").is_file():
        # Let the checkpoint loader say precisely what is wrong (bad JSON, pickle...).
        from .export.checkpoints.checkpoint import load_checkpoint

        load_checkpoint(folder)
    raise UserError(
        f"{folder / 'config.json'} not found: {folder} is neither a CrossLMM checkpoint "
        "nor a model package (manifest.json)"
    )
