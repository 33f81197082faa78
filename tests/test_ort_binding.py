"""``OrtSession``'s kept I/O binding across decode steps: what is bound again, and what not."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from crosslmm_edge.runtime.backends.base import HostArray
from crosslmm_edge.runtime.backends.ort_backend import OrtSession


def _add_graph() -> bytes:
    """y = cache + step + the sum over rows of ``rows`` [1, n, 4]; y [1, 4] float32."""
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["rows", "axis"], ["summed"], keepdims=0),
            helper.make_node("Add", ["cache", "step"], ["partial"]),
            helper.make_node("Add", ["partial", "summed"], ["y"]),
        ],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("cache", "step")]
        + [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, "n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [axis],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class CountingSession:
    """An ``InferenceSession`` whose I/O binding counts the inputs it binds."""

    def __init__(self) -> None:
        self.inner = ort.InferenceSession(_add_graph(), providers=["CPUExecutionProvider"])
        self.get_inputs, self.get_outputs = self.inner.get_inputs, self.inner.get_outputs
        self.run_with_iobinding = self.inner.run_with_iobinding
        self.bound: list[str] = []

    def io_binding(self):
        binding, bound = self.inner.io_binding(), self.bound

        class Counting:
            def __getattr__(self, name):
                return getattr(binding, name)

            def bind_input(self, name, *args):
                bound.append(name)
                return binding.bind_input(name, *args)

            def bind_cpu_input(self, name, array):
                bound.append(name)
                return binding.bind_cpu_input(name, array)

        counting = Counting()
        counting._iobinding = binding._iobinding  # what run_with_iobinding reads
        return counting


def _feeds(cache, step: float, rows: int = 0) -> dict:
    return {
        "cache": cache,
        "step": np.full((1, 4), step, np.float32),
        "rows": np.ones((1, rows, 4), np.float32),  # a new array every run
    }


def test_the_same_device_array_is_bound_once_and_its_new_contents_are_read() -> None:
    session = CountingSession()
    graph = OrtSession(session, "add", "cpu")
    cache = HostArray(np.zeros((1, 4), np.float32))
    for step in range(3):
        cache.numpy()[0, step] = 10.0  # written in place, as the KV cache is
        out = graph.run(_feeds(cache, step))["y"]
        assert np.array_equal(out, cache.numpy() + step)
    # by address once; the step every run; the empty rows once for their shape
    assert session.bound.count("cache") == 1 and session.bound.count("step") == 3
    assert session.bound.count("rows") == 1
    other = HostArray(np.ones((1, 4), np.float32))
    out = graph.run(_feeds(other, 0.0, rows=2))["y"]
    assert np.array_equal(out, np.full((1, 4), 3.0))  # 1 + 0 + two rows of ones
    assert session.bound.count("cache") == 2 and session.bound.count("rows") == 2
    out = graph.run(_feeds(other, 0.0, rows=0))["y"]
    assert np.array_equal(out, np.ones((1, 4))) and session.bound.count("rows") == 3
