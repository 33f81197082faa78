"""Without TensorRT: `build` ends in one `error:` line naming what is missing."""

from __future__ import annotations

import sys

from crosslmm_edge.cli import main


def test_build_without_tensorrt_is_one_error_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    assert main(["build", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'tensorrt'" in err[0]
