"""SIGKILL at random moments of export, quantize and state saving (see run_hostile.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crosslmm_edge.runtime.package.staging import TEMP_PATTERN, TOOL_STAGING

CLI = [sys.executable, "-m", "crosslmm_edge"]


def litter(folder: Path) -> list[str]:
    """Our temporaries in ``folder`` (hidden names with a pid), and quantize's in /tmp.
    Checked after the writer was killed or finished, so none of them is in use.
    """
    found = [p.name for p in folder.iterdir() if TEMP_PATTERN.match(p.name)]
    found += [p.name for p in folder.iterdir() if TOOL_STAGING.match(p.name)]
    tmp = Path(tempfile.gettempdir())  # quantize's calibration folder, named with its pid
    return found + [f"/tmp/{p.name}" for p in tmp.glob(".crosslmm-quantize.tmp-*")]


def kill_at(argv: list, delay: float) -> tuple[bool, float]:
    """Start the CLI, SIGKILL it after ``delay`` s; (whether it was still running, its time)."""
    start = time.time()
    child = subprocess.Popen(
        [*CLI, *map(str, argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        child.wait(timeout=delay)
        return False, time.time() - start
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return True, time.time() - start


def timed(run, argv: list) -> float:
    start = time.time()
    outcome, _, err = run(argv, timeout=600)
    assert outcome == "ok", err
    return time.time() - start


def _package_ok(folder: Path, labels: set[frozenset]) -> str:
    """'' when ``folder`` is a complete package holding one of ``labels``, else why not."""
    from crosslmm_edge.runtime.errors import UserError
    from crosslmm_edge.runtime.package.loader import open_package

    try:
        package = open_package(folder)
    except UserError as exc:
        return str(exc)
    held = frozenset(package.manifest.labels())
    return "" if held in labels else f"holds {sorted(held)}"


def kill_export(base: dict, args, rng, run, note) -> None:
    out = base["pkg"].parent / "kout"
    argv = ["export", base["ckpt"], "--out", out, "--force"]
    duration = timed(run, argv)
    for i in range(args.kills):
        killed, took = kill_at(argv, rng.uniform(0.2, duration * 0.9))
        problem = _package_ok(out, {frozenset({"onnx/fp32"})})
        left = litter(out.parent)
        note("kill -9 export", str(i), "bad-artifact" if problem else "ok",
             f"killed={killed} at {took:.1f}s litter={left} {problem}")  # fmt: skip
    timed(run, argv)  # the next run, complete
    left = litter(out.parent)
    note("kill -9 export: next run", "final", "litter" if left else "ok", str(left))


def kill_quantize(base: dict, args, rng, run, note) -> None:
    work = base["pkg"].parent / "quant"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    argv = ["quantize", None, "--in-place", "--calib-count", "2"]
    first = work / "first"
    shutil.copytree(base["pkg"], first)
    duration = timed(run, [argv[0], first, *argv[2:]])
    both = {frozenset({"onnx/fp32"}), frozenset({"onnx/fp32", "onnx/int8"})}
    for i in range(args.kills):
        copy = work / f"q{i}"
        shutil.copytree(base["pkg"], copy)
        killed, took = kill_at([argv[0], copy, *argv[2:]], rng.uniform(0.2, duration * 1.1))
        problem = _package_ok(copy, both)
        note("kill -9 quantize", str(i), "bad-artifact" if problem else "ok",
             f"killed={killed} at {took:.1f}s litter={litter(copy)} {problem}")  # fmt: skip
        if i % 5 == 4 and _package_ok(copy, {frozenset({"onnx/fp32"})}) == "":
            timed(run, [argv[0], copy, *argv[2:]])  # the next run on the killed package
            left = litter(copy)
            note("kill -9 quantize: next run", str(i), "litter" if left else "ok", str(left))


def kill_state_saving(base: dict, args, rng, run, note) -> None:
    target = base["pkg"].parent / "saved.npz"
    shutil.copyfile(base["state"], target)
    old = target.read_bytes()
    argv = ["ask", base["pkg"], "--video", base["video"], "--question", "q",
            "--save-video-state", target]  # fmt: skip
    duration = timed(run, argv)
    for i in range(args.kills):
        before = target.read_bytes()
        killed, took = kill_at(argv, rng.uniform(0.1, duration * 1.1))
        same = target.read_bytes() == before
        outcome, _, _ = run(["ask", base["pkg"], "--video", base["video"], "--question", "q",
                               "--video-state", target])  # fmt: skip
        good = same or outcome == "ok"
        left_after_kill = litter(target.parent)
        timed(run, argv)  # the next run
        left = [n for n in litter(target.parent) if "saved.npz" in n]
        result = "bad-artifact" if not good else "litter" if left else "ok"
        note("kill -9 state saving", str(i), result,
             f"killed={killed} at {took:.1f}s old={same} litter_after_kill="
             f"{[n for n in left_after_kill if 'saved.npz' in n]} after_next={left}")  # fmt: skip
    assert old  # the first state was a real one


# Saves a large state over and over, so a kill lands inside write_atomic, not before it.
SAVE_LOOP = """
import sys, numpy as np
from crosslmm_edge.runtime.video.video_state import StateKey, VideoState, save_state
key = StateKey("a" * 64, 1, 8, "onnx/fp32", "b" * 64)
layers = [np.full((1, 4096, 8, 64), float(sys.argv[2]), np.float32) for _ in range(4)]
state = VideoState(key, 1, np.zeros((1, 4, 8), np.float32), {}, [1], layers, layers)
while True:
    save_state(state, sys.argv[1])
"""


def kill_state_writer(base: dict, args, rng, run, note) -> None:
    """SIGKILL inside ``save_state`` (32 MiB states written in a loop) at random moments."""
    from crosslmm_edge.runtime.video.video_state import StateKey, load_state

    key = StateKey("a" * 64, 1, 8, "onnx/fp32", "b" * 64)
    target = base["pkg"].parent / "loop.npz"
    for i in range(args.kills):
        child = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target), str(i)])
        time.sleep(rng.uniform(1.0, 4.0))
        child.kill()
        child.wait()
        value = float(load_state(target, key).prefix_keys[0][0, 0, 0, 0])  # complete, or raises
        left = litter(target.parent)
        loop = subprocess.run([sys.executable, "-c", SAVE_LOOP.replace("while True:", "if 1:"),
                               str(target), "0"], check=True)  # fmt: skip
        after = [n for n in litter(target.parent) if "loop.npz" in n]
        note("kill -9 inside save_state", str(i), "litter" if after else "ok",
             f"state value {value} (run {i}) litter_after_kill={left} after_next={after} "
             f"{loop.returncode}")  # fmt: skip


def kill_trials(base: dict, args, rng, run, note) -> None:
    """All three writers, unless skipped."""
    if "export" not in args.skip:
        kill_export(base, args, rng, run, note)
    if "state" not in args.skip:
        kill_state_saving(base, args, rng, run, note)
        kill_state_writer(base, args, rng, run, note)
    if "quantize" not in args.skip:
        kill_quantize(base, args, rng, run, note)
