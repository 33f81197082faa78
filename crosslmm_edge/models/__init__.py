"""Models shipped inside the package (the embedded default model lives in ``tiny/``)."""

from pathlib import Path


def embedded_model_dir() -> Path:
    """Return the folder of the embedded tiny CrossLMM checkpoint."""
    return Path(__file__).parent / "tiny"
