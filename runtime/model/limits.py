"""Sane bounds on every size a file gives us, checked before anything is allocated.

A config.json, a manifest or a state file comes from whoever copied it onto
the device. A size in it decides how much memory a model, a KV cache or a
state array takes, so each one is bounded here (generously: a 100B-class
model fits) and the product that would be allocated is compared with the
memory the machine has. Floats that enter the arithmetic must be finite.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import UserError

# Upper bounds of config sizes, by the name messages use (config.py's _size_problems).
CONFIG_BOUNDS = {
    "vision hidden_size": 1 << 16,
    "vision intermediate_size": 1 << 18,
    "vision num_hidden_layers": 256,
    "vision num_attention_heads": 1024,
    "image_size": 4096,
    "patch_size": 4096,
    "vocab_size": 1 << 22,
    "text hidden_size": 1 << 16,
    "text intermediate_size": 1 << 18,
    "text num_hidden_layers": 512,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "max_position_embeddings": 1 << 24,
    "pooled_grid": 4096,
    "dcal_every": 512,
    "num_frames": 4096,
}
MAX_CONTEXT = 1 << 20  # positions a package may be exported for
MAX_FRAMES = 4096  # frames per video a package may be exported for
MAX_JSON_BYTES = 64 << 20  # manifest.json, config.json, an index: text, never this big
MAX_TOKEN_ID = (1 << 31) - 1


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int | None:
    """Bytes the machine can still give us (Linux MemAvailable; else physical), or None."""
    available = _meminfo_available()
    if available is not None:
        return available
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_allocation(nbytes: int, what: str, hint: str = "") -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when the machine does not have them."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise UserError(
            f"{what} needs {nbytes / 2**30:.2f} GiB, more than the "
            f"{available / 2**30:.2f} GiB of memory available{'; ' + hint if hint else ''}"
        )


def kv_cache_bytes(layers: int, positions: int, kv_heads: int, head_dim: int, itemsize: int) -> int:
    """Bytes of a KV cache: keys and values of every layer at ``positions`` positions."""
    return 2 * layers * positions * kv_heads * head_dim * itemsize


def is_count(value: object, low: int = 1, high: int | None = None) -> bool:
    """Whether ``value`` is a real ``int`` (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return value >= low and (high is None or value <= high)


def size_problems(sizes: Mapping[str, object]) -> list[str]:
    """Messages for config sizes that are not integers in [1, CONFIG_BOUNDS[name]]."""
    problems = []
    for name, value in sizes.items():
        high = CONFIG_BOUNDS.get(name)
        if not is_count(value):
            problems.append(f"{name} must be a positive integer, got {value!r}")
        elif high is not None and value > high:  # type: ignore[operator]
            problems.append(f"{name} {value} exceeds the supported maximum {high}")
    return problems


def positive_float_problems(values: Mapping[str, object]) -> list[str]:
    """Messages for values that are not finite positive numbers (NaN, inf, 0, strings)."""
    problems = []
    for name, value in values.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type]
            problems.append(f"{name} must be a finite positive number, got {value!r}")
    return problems
