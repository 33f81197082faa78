"""Helpers of the trust tests: one exported package per session, copies to tamper with."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from crosslmm_edge.cli import main as cli_main
from crosslmm_edge.models import embedded_model_dir


def exported_package(tmp_path_factory) -> Path:
    """The embedded model exported once per session (about 12 s), shared read-only."""
    target = tmp_path_factory.getbasetemp() / "trust-package"
    if not (target / "manifest.json").is_file():
        from crosslmm_edge.export.graphs.package import export_package

        export_package(embedded_model_dir(), target)
    return target


def copy_package(source: Path, folder: Path) -> Path:
    """A private copy of a package to tamper with."""
    shutil.copytree(source, folder)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_manifest(pkg: Path, change) -> dict[str, Any]:
    """Apply ``change(manifest_dict)`` and write the manifest back."""
    data = json.loads((pkg / "manifest.json").read_text())
    change(data)
    (pkg / "manifest.json").write_text(json.dumps(data))
    return data


def artifact(data: dict[str, Any], role: str) -> dict[str, Any]:
    """The first artifact record of ``role`` in a manifest dict."""
    return data["graphs"][role]["artifacts"][0]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr)."""
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_refused(capsys, *argv: str, match: str = "") -> str:
    """The command ends in exit 2 with exactly one ``error:`` line containing ``match``."""
    code, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    return lines[0]


def json_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside nested dicts and lists (where a fuzzer may strike)."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        items = list(data.items())
    else:
        items = list(enumerate(data)) if type(data) is list else []
    for key, value in items:
        found += json_paths(value, (*prefix, key))
    return found


def mutate(data: dict, path: tuple, value: Any, delete: bool) -> dict:
    """A deep copy of ``data`` with ``path`` set to ``value`` (or deleted, in a dict)."""
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def with_external_data(pkg: Path, location: str, listed: bool) -> Path:
    """Re-save pooling.onnx with its weights in ``pooling.data``, naming ``location``.

    The manifest gets the new graph's sha256 and, if ``listed``, the data file.
    """
    import onnx

    model = onnx.load(pkg / "pooling.onnx")
    onnx.save_model(
        model, pkg / "pooling.onnx", save_as_external_data=True, location="pooling.data",
        size_threshold=0,
    )  # fmt: skip
    model = onnx.load(pkg / "pooling.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (pkg / "pooling.onnx").write_bytes(model.SerializeToString())
    refs = [{"file": "pooling.data", "sha256": sha256(pkg / "pooling.data")}] if listed else []
    digest = sha256(pkg / "pooling.onnx")
    edit_manifest(pkg, lambda d: artifact(d, "pooling").update(sha256=digest, external_data=refs))
    return pkg / "pooling.data"


def npz_bytes(members: dict[str, Any], compress: bool = False) -> bytes:
    """An .npz archive of ``members`` written member by member (any dtype, order, method)."""
    import numpy as np

    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, array in members.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    return out.getvalue()
