"""Deliberately damaged copies of a package: real drift for the drift tests to find."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from onnx import numpy_helper

from crosslmm_edge.runtime.package.files import file_sha256


def scaled_weight_copy(
    package: Path, target: Path, module: str, factor: float, role: str = "llm"
) -> Path:
    """A copy of ``package`` with the weight of ``module``'s MatMul in ``role``.onnx scaled.

    The manifest's sha256 is updated, so the copy loads as a valid package.
    """
    from crosslmm_edge.calibration.recipes import weight_nodes

    shutil.copytree(package, target)
    graph = f"{role}.onnx"
    model = onnx.load(str(target / graph))
    node = next(n for n in weight_nodes(model, role) if n.module == module)
    weight = next(n for n in model.graph.node if n.name == node.name).input[1]
    init = next(i for i in model.graph.initializer if i.name == weight)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, weight))
    onnx.save(model, str(target / graph))
    manifest = json.loads((target / "manifest.json").read_text())
    for artifact in manifest["graphs"][role]["artifacts"]:
        if artifact["file"] == graph:
            artifact["sha256"] = file_sha256(target / graph)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target
