"""The GPU check's ``install`` step: onnxruntime-gpu and this project in a venv that sees
the machine's PyTorch, CUDA and cuDNN (``--system-site-packages``), offline.

The wheels come from the carried bundle (``gpu_bundle.py``). A venv that
already holds the bundle's onnxruntime-gpu (an earlier run on the same warm
machine) is reused; the project is reinstalled every time (the code under
test may have changed). onnxruntime's ``preload_dlls`` looks for the nvidia
libraries beside itself, which in a venv they are not, so the steps run with
the nvidia packages' ``lib`` folders on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import gpu_bundle
from .gpu_check_run import REPO, CannotRunHereError, Check

MISSING_IMPORTS = """
import importlib.util, json, sys
def missing(name):
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:  # its parent package is missing
        return True
print(json.dumps([name for name in sys.argv[1:] if missing(name)]))
"""

NVIDIA_LIBS = """
import glob, json, os
try:
    import nvidia
    paths = list(nvidia.__path__)
except ImportError:
    paths = []
print(json.dumps([d for p in paths for d in sorted(glob.glob(os.path.join(p, "*", "lib")))]))
"""

ORT_PROBE = """
import json, onnxruntime as ort
print(json.dumps({"version": ort.__version__, "providers": ort.get_available_providers(),
                  "file": ort.__file__}))
"""


def install(check: Check) -> dict:
    """Install what the bundle holds (reusing a venv that has it) and point the check at it."""
    if check.provider == "cpu":
        raise CannotRunHereError("the CPU dry run uses this interpreter and its packages")
    manifest = gpu_bundle.load_bundle(check.bundles)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise RuntimeError(
            f"the bundle holds wheels for Python {manifest['python']}, this machine runs {here}: "
            f"prepare it again with --python {here}"
        )
    venv = check.work / "venv"
    python = str(venv / "bin" / "python")
    version = manifest["requirement"].split("==")[1]
    installed = None
    if Path(python).exists():
        installed = _ort(check, python).get("version")
    extras: list[str] = []
    if installed != version:
        extras = _install_wheels(check, manifest, venv, python)
    pip = [*pip_of(python), "install", "--no-index", "--no-deps", "--quiet"]
    check.run("pip-project", [*pip, "--no-build-isolation", str(REPO)])
    libs = json.loads(check.run("nvidia-libs", [python, "-c", NVIDIA_LIBS]))
    old = check.env.get("LD_LIBRARY_PATH", "")
    check.env["LD_LIBRARY_PATH"] = ":".join([*libs, old] if old else libs)
    check.python = python
    ort = _ort(check, python)
    if "CUDAExecutionProvider" not in ort.get("providers", []):
        raise RuntimeError(f"onnxruntime in {venv} offers no CUDA provider: {ort}")
    figures = {"onnxruntime": ort, "reused_venv": installed == version, "extras": extras}
    return {
        "figures": {**figures, "nvidia_lib_dirs": libs},
        "headline": {"onnxruntime": f"{ort['version']} {', '.join(ort['providers'])}"},
    }


def _install_wheels(check: Check, manifest: dict, venv: Path, python: str) -> list[str]:
    """Unpack the bundle, make the venv, install onnxruntime-gpu and the missing extras;
    returns the extras installed."""
    wheelhouse = check.work / "wheelhouse"
    gpu_bundle.unpack(check.bundles, wheelhouse)
    if not Path(python).exists():
        make_venv(check, venv)
    wheels = {_project(w["file"]): wheelhouse / w["file"] for w in manifest["wheels"]}
    missing = json.loads(check.run("missing", [python, "-c", MISSING_IMPORTS, *manifest["extras"]]))
    wanted = ["onnxruntime-gpu", *(manifest["extras"][name] for name in missing)]
    pip = [*pip_of(python), "install", "--no-index", "--no-deps", "--quiet"]
    check.run("pip-wheels", [*pip, *(str(wheels[_project(name)]) for name in wanted)])
    return wanted[1:]


def make_venv(check: Check, venv: Path) -> None:
    """A venv that sees the system's packages; without pip if ensurepip is missing
    (Debian's python3 without python3-venv): then the system's pip installs into it."""
    argv = [sys.executable, "-m", "venv", "--system-site-packages", str(venv)]
    try:
        check.run("venv", argv)
    except RuntimeError:
        check.run("venv-without-pip", [*argv, "--without-pip", "--clear"])


def pip_of(python: str) -> list[str]:
    """The pip command that installs into ``python``'s environment."""
    if (Path(python).parent / "pip").exists():
        return [python, "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", python]  # pip >= 22.3


def _project(name: str) -> str:
    """A wheel file's (or a requirement's) project name, normalised: ``onnx_ir-1.1`` -> onnx-ir."""
    return name.split("-")[0].lower().replace("_", "-") if name.endswith(".whl") else name


def _ort(check: Check, python: str) -> dict:
    """What onnxruntime ``python`` imports: version, providers, file ({} if none)."""
    try:
        return json.loads(check.run("onnxruntime", [python, "-c", ORT_PROBE]))
    except RuntimeError:
        return {}
