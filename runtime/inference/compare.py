"""How two runs of a graph are compared (verify, drift): errors and tolerances, torch-free."""

from __future__ import annotations

import numpy as np

# Allowed max abs error per output: atol + rtol · max|reference| (fp16 keeps ~3 digits).
TOLERANCE = {"fp32": (1e-4, 0.0), "fp16": (1e-2, 1e-2)}


def tolerance_for(precision: str, reference: np.ndarray) -> float:
    """The max abs error allowed for an output whose reference value is ``reference``."""
    atol, rtol = TOLERANCE[precision]
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return atol + rtol * scale


def compare(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Max abs error and cosine similarity (1.0 for empty or all-zero tensors)."""
    if reference.shape != actual.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference's {reference.shape}")
    if reference.size == 0:
        return 0.0, 1.0
    ref, act = reference.astype(np.float64).ravel(), actual.astype(np.float64).ravel()
    norms = np.linalg.norm(ref) * np.linalg.norm(act)
    cosine = float(ref @ act / norms) if norms > 0 else 1.0
    return float(np.abs(ref - act).max()), cosine
