"""CI must run the README's two set-up commands verbatim, in a fresh venv (the brief)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_command(marker: str) -> str:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(marker))
    return lines[index + 1].strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = _readme_command("# 2. the tests")
    assert command.startswith("python3 -m pip install")
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_readme_demo_command_installs_before_running() -> None:
    command = _readme_command("# 1. the demo")
    assert "pip install" in command and command.endswith("crosslmm_edge demo")


def test_ci_runs_both_commands_in_order_in_a_fresh_venv() -> None:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    demo, tests = _readme_command("# 1. the demo"), _readme_command("# 2. the tests")
    venv = next(i for i, line in enumerate(lines) if "-m venv" in line)
    assert venv < lines.index(demo) < lines.index(tests)
