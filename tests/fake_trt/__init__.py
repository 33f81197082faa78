"""Test doubles of ``tensorrt`` and ``cuda.bindings.runtime``, installed per test.

``install(monkeypatch)`` puts both in ``sys.modules`` for one test (never in
installed code) and returns the fake GPU and the fake ``tensorrt`` module, so
a test can change the GPU or the TensorRT version between build and load.
"""

from __future__ import annotations

import sys
import types

import pytest

from fake_trt import fake_cudart, fake_tensorrt


def install(monkeypatch: pytest.MonkeyPatch) -> tuple[fake_cudart.Device, types.ModuleType]:
    """Install the fakes for the current test; (fake device, fake tensorrt module)."""
    device = fake_cudart.Device()
    runtime = fake_cudart.make_module(device)
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []  # a package, so `from cuda.bindings import runtime` works
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []
    cuda.bindings = bindings
    trt = fake_tensorrt.make_module(device)
    for name, module in {
        "cuda": cuda,
        "cuda.bindings": bindings,
        "cuda.bindings.runtime": runtime,
        "tensorrt": trt,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return device, trt


def set_version(trt: types.ModuleType, version: str) -> None:
    """Make the fake TensorRT report (and accept plans of) another version."""
    trt.__version__ = version
    trt.state.version = version
