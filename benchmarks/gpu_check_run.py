"""The GPU check's runner: the ``Check`` (options, interpreter, report), steps run in order
under one deadline, the report and summary rewritten after each step.

Standard library only: it starts before anything is installed. The steps are
in ``gpu_check_steps.py`` and ``gpu_install.py``; the command in ``gpu_check.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.package.files import write_text_atomic

REPO = Path(__file__).resolve().parent.parent  # the work tree (benchmarks/..)
RESERVE_S = 15  # kept back from every step's timeout: the report must still be written


class CannotRunHereError(Exception):
    """A step that cannot run here; its message says why."""


@dataclass
class Check:
    """One run of the check: options, the interpreter the steps use, the report so far."""

    provider: str
    out: Path
    work: Path
    bundles: list[Path]
    deadline: float  # time.monotonic() at which everything must be done
    python: str = sys.executable  # the venv's python once ``install`` ran
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    report: dict = field(default_factory=lambda: {"steps": {}})

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> str:
        """Run ``argv`` (a list; ``python`` is the steps' interpreter) until the deadline;
        its output goes to ``logs/NAME.log``. Returns stdout; raises on failure."""
        timeout = self.remaining() - RESERVE_S
        if timeout < 5:
            raise TimeoutError(f"{name}: no time left")
        argv = [self.python if a == "python" else a for a in argv]
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                argv,
                cwd=cwd or self.out,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode()
            log.write_text(f"$ {' '.join(argv)}\n(timed out after {timeout:.0f} s)\n{stderr}")
            raise TimeoutError(f"{name}: timed out after {timeout:.0f} s") from None
        log.write_text(f"$ {' '.join(argv)}\n{done.stdout}\n--- stderr\n{done.stderr}")
        if done.returncode:
            tail = (done.stderr.strip() or done.stdout.strip())[-1500:]
            raise RuntimeError(f"{name}: exit {done.returncode}: {tail}")
        return done.stdout

    def save(self) -> None:
        write_text_atomic(self.out / "report.json", json.dumps(self.report, indent=1) + "\n")
        write_text_atomic(self.out / "summary.txt", summary(self.report) + "\n")


Step = Callable[[Check], dict]


def run_steps(check: Check, steps: Sequence[tuple[str, Step]]) -> bool:
    """Run each step, recording status, seconds and figures; True if none failed."""
    ok = True
    for name, step in steps:
        started = time.monotonic()
        record: dict
        try:
            record = {"status": "passed", **step(check)}
        except CannotRunHereError as exc:
            record = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # a failed step is a finding; the others still run
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        record["seconds"] = round(time.monotonic() - started, 1)
        ok &= record["status"] != "failed"
        check.report["steps"][name] = record
        check.save()
        print(f"[{record['status']}] {name} ({record['seconds']} s)", flush=True)
    return ok


def summary(report: dict) -> str:
    """The report as lines a person reads: each step, then its headline figures."""
    lines = [f"GPU check, provider {report.get('provider')}: {report.get('device', '?')}"]
    for name, record in report["steps"].items():
        why = record.get("reason") or record.get("error") or ""
        lines.append(f"{record['status']:>7}  {name} ({record['seconds']} s) {why}".rstrip())
        for key, value in record.get("headline", {}).items():
            lines.append(f"         {key}: {_short(value)}")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
