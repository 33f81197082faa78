"""Write the trained model as a spec checkpoint folder (spec section 4)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Tokenizer

from crosslmm_edge.export.reference.model import CrossLMM
from tiny_model.tokenizer import write_tokenizer_files


def save_tiny_checkpoint(model: CrossLMM, tokenizer: Tokenizer, out_dir: Path) -> None:
    """config.json, model.safetensors and tokenizer files, renamed into place when complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    try:
        (staging / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        write_tokenizer_files(tokenizer, staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
