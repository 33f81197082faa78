"""A runtime-only install (no torch) gets a clear message for export-side commands."""

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\nfrom crosslmm_edge.cli import main\n"


def test_export_without_torch_names_the_missing_extra(tmp_path):
    script = BLOCK_TORCH + f"sys.exit(main(['export', {str(tmp_path)!r}, '--out', 'x']))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "crosslmm-edge[export]" in lines[0]
