"""Test doubles of ``tensorrt`` and ``cuda.bindings.runtime``, installed per test.

``install(monkeypatch)`` puts both in ``sys.modules`` for one test (never in
installed code) and returns the fake GPU and the fake ``tensorrt`` module, so
a test can change the GPU or the TensorRT version between build and load.
``version`` picks the TensorRT the double poses as (its API follows it:
10.0, 10.3 as on JetPack 6.1/6.2, 10.16, 11.1); ``native_handle=False``
leaves out ``cuda.bindings.utils`` (cuda-python before 12.9.1).
"""

from __future__ import annotations

import sys
import types

import pytest

from fake_trt import fake_cudart, fake_tensorrt

JETPACK_6_TENSORRT = "10.3.0.30"


def install(
    monkeypatch: pytest.MonkeyPatch, version: str = JETPACK_6_TENSORRT, native_handle: bool = True
) -> tuple[fake_cudart.Device, types.ModuleType]:
    """Install the fakes for the current test; (fake device, fake tensorrt module)."""
    device = fake_cudart.Device()
    runtime = fake_cudart.make_module(device)
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []  # a package, so `from cuda.bindings import runtime` works
    bindings.runtime = runtime
    modules = {"cuda.bindings": bindings, "cuda.bindings.runtime": runtime}
    if native_handle:
        utils = types.ModuleType("cuda.bindings.utils")
        utils.get_cuda_native_handle = fake_cudart.get_cuda_native_handle
        bindings.utils = utils
        modules["cuda.bindings.utils"] = utils
    else:
        modules["cuda.bindings.utils"] = None  # import fails, as on cuda-python 12.6
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []
    cuda.bindings = bindings
    trt = fake_tensorrt.make_module(device, version)
    for name, module in {**modules, "cuda": cuda, "tensorrt": trt}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return device, trt


def set_version(trt: types.ModuleType, version: str) -> None:
    """Make the fake TensorRT report (and accept plans of) another version (same API)."""
    trt.__version__ = version
    trt.state.version = version
