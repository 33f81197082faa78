"""Fixtures shared by the TensorRT tests: the embedded model exported in fp16, a copy per test.

Registered for every test module by ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_models import write_test_video

from crosslmm_edge.cli import main
from crosslmm_edge.models import embedded_model_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """The embedded model exported in fp16 (no engines yet), and a short video."""
    root = tmp_path_factory.mktemp("trt")
    folder = root / "pkg"
    args = ["export", str(embedded_model_dir()), "--out", str(folder), "--dtype", "fp16"]
    assert main(args) == 0
    return folder, write_test_video(root / "clip.mp4", frames=8, size=32)


@pytest.fixture
def package(exported, tmp_path) -> Path:
    """A fresh copy of the exported package per test (build adds files to it)."""
    copy = tmp_path / "pkg"
    shutil.copytree(exported[0], copy)
    return copy
