"""ONNX Runtime's TensorRT provider: 256-byte aligned output addresses.

The provider passes the buffer an output is bound to straight to TensorRT's
``setTensorAddress`` (``BindContextOutput`` in onnxruntime's
tensorrt_execution_provider.cc), which needs 256-byte alignment. The session
here stands in for one with that provider: it runs the graph in ONNX Runtime
on the CPU at the (fake CUDA) addresses bound through I/O binding, and
fails a run whose output address is misaligned, as the enqueue would.
"""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort
import pytest
from fake_trt import install
from onnx import TensorProto, helper

from crosslmm_edge.runtime.backends.cuda_runtime import open_cuda_runtime
from crosslmm_edge.runtime.backends.ort_aligned import AlignedOutputs
from crosslmm_edge.runtime.backends.ort_backend import OrtSession
from crosslmm_edge.runtime.backends.trt_buffers import device_zeros

ROW = (2, 32)  # 2 KV heads x 32: 128-byte fp16 rows, the embedded model's


def _rows_graph() -> bytes:
    """present = x + x, [1, n, 2, 32] fp16 (a graph writing new KV rows)."""
    shape = [1, "n", *ROW]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["present"])],
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, shape)],
        [helper.make_tensor_value_info("present", TensorProto.FLOAT16, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class TensorrtProviderSession:
    """An ``InferenceSession`` posing as one on the TensorRT provider (CUDA I/O binding)."""

    def __init__(self, model: bytes) -> None:
        self.cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.get_inputs, self.get_outputs = self.cpu.get_inputs, self.cpu.get_outputs

    def io_binding(self) -> Binding:
        return Binding()

    def run_with_iobinding(self, binding: Binding) -> None:
        feeds = {name: _read(*bound) for name, bound in binding.inputs.items()}
        names = list(binding.outputs)
        for name, value in zip(names, self.cpu.run(names, feeds), strict=True):
            pointer = binding.outputs[name][3]
            if pointer % 256:
                raise RuntimeError(f"TensorRT EP execution context enqueue failed ({name})")
            value = np.ascontiguousarray(value)
            ctypes.memmove(pointer, value.ctypes.data, value.nbytes)


class Binding:
    def __init__(self) -> None:
        self.inputs: dict[str, tuple] = {}
        self.outputs: dict[str, tuple] = {}

    def bind_cpu_input(self, name, array) -> None:
        self.inputs[name] = (array.dtype, array.shape, array.ctypes.data)

    def bind_output(self, name, device, device_id, dtype, shape, pointer) -> None:
        assert device == "cuda"
        self.outputs[name] = (device, dtype, tuple(shape), pointer)

    def synchronize_outputs(self) -> None:
        pass


def _read(dtype, shape, pointer) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_uint8 * nbytes).from_address(pointer)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@pytest.mark.parametrize("start", [1, 2])  # 128 bytes in: misaligned; 256: aligned
def test_kv_rows_at_any_position_are_written_through_aligned_addresses(monkeypatch, start):
    install(monkeypatch)
    cuda = open_cuda_runtime()
    aligned = AlignedOutputs(cuda)
    session = OrtSession(TensorrtProviderSession(_rows_graph()), "llm", "cuda", aligned)
    cache = device_zeros(cuda, (1, 8, *ROW), np.float16)
    cuda.synchronize()  # zeroed before ONNX Runtime's own stream writes into it
    rows = np.random.default_rng(0).standard_normal((1, 3, *ROW)).astype(np.float16)
    session.run({"x": rows}, write_to={"present": cache.rows(start, start + 3)}, fetch=[])
    want = np.zeros((1, 8, *ROW), np.float16)
    want[:, start : start + 3] = rows + rows
    assert np.array_equal(cache.numpy(), want)


def test_without_the_scratch_a_misaligned_row_fails_as_tensorrt_would(monkeypatch):
    install(monkeypatch)
    cuda = open_cuda_runtime()
    session = OrtSession(TensorrtProviderSession(_rows_graph()), "llm", "cuda")
    cache = device_zeros(cuda, (1, 8, *ROW), np.float16)
    rows = np.ones((1, 1, *ROW), np.float16)
    with pytest.raises(RuntimeError, match="enqueue failed"):
        session.run({"x": rows}, write_to={"present": cache.rows(1, 2)}, fetch=[])
