"""Read and write CrossLMM checkpoint folders (spec section 4).

A folder holds ``config.json``, ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), the tokenizer files and
``generation_config.json``. Only safetensors are read: a pickle can run code
when loaded, so ``torch.load`` is never called.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..runtime.errors import UserError
from ..runtime.model.config import CrossLMMConfig
from ..runtime.model.limits import check_allocation
from ..runtime.package.containment import inside
from ..runtime.package.files import hash_file_into, read_json, staged_folder
from .model import CrossLMM
from .safetensors_header import check_safetensors

CONFIG_NAME = "config.json"
SINGLE_WEIGHTS = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
GENERATION_CONFIG = "generation_config.json"
# SigLIP's pooling head is unused by CrossLMM; old checkpoints may hold the
# position-id buffer, which the model recomputes.
DROPPED_PREFIXES = ("vision_model.head.", "vision_model.embeddings.position_ids")


def load_config(directory: str | Path) -> CrossLMMConfig:
    """The ``CrossLMMConfig`` of a checkpoint folder."""
    path = Path(directory) / CONFIG_NAME
    data = read_json(path)
    if data.get("model_type") != "crosslmm":
        raise UserError(
            f"{path}: model_type is {data.get('model_type')!r}, not a CrossLMM checkpoint "
            "(expected 'crosslmm'; build one with `crosslmm-edge compose`)"
        )
    try:
        return CrossLMMConfig.from_dict(data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: invalid CrossLMM config ({exc})") from None


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a folder (single file or every shard of the index)."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    single = directory / SINGLE_WEIGHTS
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no 'weight_map' object")
        # Shards must be plain file names: an index never reaches outside its folder.
        values = list(weight_map.values())
        bad = [n for n in values if not isinstance(n, str) or Path(n).name != n or n in ("", "..")]
        names = set() if bad else set(values)
        if bad:
            raise UserError(f"{index}: weight_map names {bad[0]!r}, not a shard file name")
        bad_keys = [k for k in weight_map if not k or len(k) > 1024]
        if bad_keys or not names:
            raise UserError(f"{index}: weight_map is empty or names an empty or huge tensor")
        # Regular files in the folder itself: no link out, no FIFO that would hang a read.
        return [inside(directory, name, f"shard listed in {index.name}") for name in sorted(names)]
    if os.path.lexists(single):
        return [inside(directory, SINGLE_WEIGHTS, "weights file")]
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"{pickles[0]}: pickle checkpoints are refused (loading one can run arbitrary "
            "code); convert it to safetensors"
        )
    raise UserError(f"{directory}: no {SINGLE_WEIGHTS} or {INDEX_NAME}")


def read_weights(directory: str | Path) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """All tensors of a folder's safetensors files, and the file each came from."""
    state: dict[str, Tensor] = {}
    origin: dict[str, Path] = {}
    files = weight_files(directory)
    for path in files:
        check_safetensors(path)  # shapes and offsets bounded by the file before loading
    total = sum(path.stat().st_size for path in files)
    check_allocation(total, f"the weights in {directory}")
    for path in files:
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable safetensors file ({exc})") from None
        state.update(tensors)
        origin.update(dict.fromkeys(tensors, path))
    return state, origin


def _check_keys(
    model: CrossLMM, state: dict[str, Tensor], origin: dict[str, Path], where: Path
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"{where}: weights do not match the config: " + "; ".join(parts))
    for key, tensor in state.items():
        want = tuple(expected[key].shape)
        if tuple(tensor.shape) != want:
            raise UserError(
                f"{origin.get(key, where)}: weight {key} has shape {list(tensor.shape)}, "
                f"the config expects {list(want)}"
            )


def model_from_state_dict(
    config: CrossLMMConfig,
    state: dict[str, Tensor],
    origin: dict[str, Path],
    where: Path,
    dtype: torch.dtype = torch.float32,
) -> CrossLMM:
    """A ``CrossLMM`` holding exactly ``state`` (strict keys and shapes), in eval mode."""
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    if config.text_config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)  # tied: the embedding is the head
    with torch.device("meta"):  # no random init: every weight comes from the files
        model = CrossLMM(config)
    _check_keys(model, state, origin, where)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def load_checkpoint(directory: str | Path, dtype: torch.dtype = torch.float32) -> CrossLMM:
    """Load a CrossLMM checkpoint folder (safetensors only) as a model in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: checkpoint folder not found")
    config = load_config(directory)
    state, origin = read_weights(directory)
    return model_from_state_dict(config, state, origin, directory, dtype)


def _shards(state: dict[str, Tensor], max_bytes: int | None) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_bytes is not None and shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def _write_weights(state: dict[str, Tensor], folder: Path, max_bytes: int | None) -> None:
    shards = _shards(state, max_bytes)
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_WEIGHTS, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _default_generation_config(config: CrossLMMConfig) -> dict[str, Any]:
    t = config.text_config
    return {"bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "do_sample": False}


def _write_side_files(
    config: CrossLMMConfig,
    folder: Path,
    tokenizer_src: Path | None,
    extra_files: dict[str, str] | None,
) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    for name in (*TOKENIZER_FILES, GENERATION_CONFIG):
        if tokenizer_src is not None and (Path(tokenizer_src) / name).is_file():
            shutil.copyfile(Path(tokenizer_src) / name, folder / name)
    if not (folder / GENERATION_CONFIG).exists():
        text = json.dumps(_default_generation_config(config), indent=2) + "\n"
        (folder / GENERATION_CONFIG).write_text(text)
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")


def save_checkpoint(
    model: CrossLMM,
    directory: str | Path,
    tokenizer_src: Path | None = None,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder, atomically.

    Weights go to one ``model.safetensors`` or, with ``max_shard_bytes``, to
    shards plus an index. Tokenizer files and ``generation_config.json`` are
    copied from ``tokenizer_src``; ``extra_files`` (name -> text) are written
    last and win. Everything lands in a temporary sibling folder first and is
    renamed into place when complete, so no half-written checkpoint remains.
    """
    target = Path(directory)
    with staged_folder(target, "checkpoint", force=overwrite, marker=CONFIG_NAME) as temp:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        _write_weights(state, temp, max_shard_bytes)
        _write_side_files(model.config, temp, tokenizer_src, extra_files)
    return target


def checkpoint_hash(directory: str | Path) -> str:
    """sha256 over the config, weights and tokenizer files (names and contents)."""
    directory = Path(directory)
    names = [CONFIG_NAME, *(p.name for p in weight_files(directory))]
    if (directory / INDEX_NAME).is_file():
        names.append(INDEX_NAME)
    names += [n for n in (*TOKENIZER_FILES, GENERATION_CONFIG) if (directory / n).is_file()]
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        hash_file_into(digest, directory / name)
    return digest.hexdigest()
