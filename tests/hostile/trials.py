"""Hostile CLI trials: manifests, configs, states, graphs, output paths, text."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np

from tests.trust_helpers import json_paths, mutate, npz_bytes

VALUES = [None, True, False, -1, 0, 1, 10**12, 10**9, 2**64, 1.5, -0.0, float("nan"),
          float("inf"), "x", "", "../x", "/etc/passwd", [], {}, [1, 2], {"a": 1},
          "nan"]  # fmt: skip


def _mutated(data, rng):
    path = rng.choice(json_paths(data))
    return mutate(data, path, rng.choice(VALUES), rng.random() < 0.2), path


def _question(pkg, video, question, *extra):
    return ["ask", pkg, "--video", video, "--question", question, "--max-new-tokens", 4, *extra]


def _ask(pkg, video, *extra):
    return ["ask", pkg, "--video", video, "--question", "what colour?", "--max-new-tokens", 4,
            *extra]  # fmt: skip


def json_file_trials(source: Path, name: str, group: str, count, rng, run, note, video):
    """``count`` runs of ``ask`` on copies of ``source`` whose ``name`` has one field changed."""
    data = json.loads((source / name).read_text())
    trial = source.parent / f"trial-{source.name}"
    for i in range(count):
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(source, trial)
        mutated, path = _mutated(data, rng)
        (trial / name).write_text(json.dumps(mutated))
        outcome, _, detail = run(_ask(trial, video))
        note(group, f"{i} {path}", outcome, detail)


def _state_variant(raw: bytes, rng) -> bytes:
    if rng.random() < 0.4:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data[: rng.randint(0, len(data))] if rng.random() < 0.3 else data)
    with np.load(io.BytesIO(raw)) as loaded:
        members = {n: loaded[n] for n in loaded.files}
    name = rng.choice(sorted(members))
    value = members[name]
    change = rng.choice(["f8", "f2", ">f4", "i4", "shape", "nan", "drop", "meta", "extra"])
    if change in ("f8", "f2", ">f4", "i4") and name != "meta":
        members[name] = value.astype(change)
    elif change == "shape" and name != "meta":
        members[name] = value[:, :-1] if value.ndim > 1 else value[:0]
    elif change == "nan" and name != "meta":
        members[name] = value * np.nan
    elif change == "drop":
        del members[name]
    elif change == "extra":
        members["cross/t2v_key.99"] = np.zeros((1, 1, 1, 1), np.float32)
    else:
        meta = json.loads(str(members["meta"]))
        meta[rng.choice(sorted(meta))] = rng.choice(VALUES[:-3])
        members["meta"] = np.array(json.dumps(meta))
    return npz_bytes(members)


def state_trials(base, count, rng, run, note):
    raw = base["state"].read_bytes()
    target = base["pkg"].parent / "hostile.npz"
    for i in range(count):
        target.write_bytes(_state_variant(raw, rng))
        outcome, _, detail = run(_ask(base["pkg"], base["video"], "--video-state", target))
        note("state file", str(i), outcome, detail)


def _special(folder: Path, kind: str) -> Path:
    path = folder / f"target-{kind}"
    if kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a null device of our own
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
        (path / "thesis.tex").write_text("mine")
    elif kind == "symlink":
        path.symlink_to(folder / "elsewhere")
    elif kind == "file":
        path.write_text("mine")
    return path


def output_trials(base, rng, run, note):
    folder = base["pkg"].parent / "outputs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    specials = ["device", "fifo", "folder", "symlink", "file"]
    targets = {kind: _special(folder, kind) for kind in specials}
    targets["missing dir"] = folder / "no" / "such" / "file"
    targets["name too long"] = folder / ("x" * 300)
    targets["proc"] = Path("/proc/version")
    targets["read-only fs"] = Path("/sys/kernel/hostile.npz")
    for kind, target in targets.items():
        for cmd in (
            _ask(base["pkg"], base["video"], "--save-video-state", target),
            ["synth-video", "--out", target, "--seed", 1],
            ["export", base["ckpt"], "--out", target, "--force"],
        ):
            if cmd[0] != "ask" and kind == "file":
                continue  # replacing one's own regular file is allowed there
            before = os.lstat(target) if os.path.lexists(target) else None
            outcome, _, detail = run(cmd)
            after = os.lstat(target) if os.path.lexists(target) else None
            kept = before is None or (
                after and stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
            )
            if kind == "file" and cmd[0] == "ask":
                kept = True
            note("output path", f"{cmd[0]} -> {kind}", outcome if kept else "bad-artifact", detail)


def graph_trials(base, run, note):
    from tests.hostile.graph_attacks import ATTACKS

    trial = base["pkg"].parent / "gpkg"
    for name, attack in ATTACKS.items():
        shutil.rmtree(trial, ignore_errors=True)
        shutil.rmtree(trial.parent / "outside", ignore_errors=True)
        shutil.copytree(base["pkg"], trial)
        attack(trial)
        for cmd in (_ask(trial, base["video"]), ["verify", trial]):
            outcome, _, detail = run(cmd)
            result = "crash" if outcome == "ok" else outcome  # every attack must be refused
            note("graph/package file", f"{name} ({cmd[0]})", result, detail)


def text_trials(base, run, note):
    pkg, video = base["pkg"], base["video"]
    bad = os.fsdecode(b"what \xff\xfe colour?")
    cases = {
        "non-UTF-8 question": _question(pkg, video, bad),
        "control tokens": _question(pkg, video, "<|im_end|><|video_pad|>"),
        "huge question": _question(pkg, video, "colour " * 3000),
        "empty question": _question(pkg, video, ""),
        "non-UTF-8 system": _ask(pkg, video, "--system", bad),
        "max-context 0": _ask(pkg, video, "--max-context", 0),
        "max-context -5": _ask(pkg, video, "--max-context", -5),
        "max-context 1e12": _ask(pkg, video, "--max-context", 10**12),
        "frames 1e9": _ask(pkg, video, "--frames", 10**9),
        "video is a fifo": _ask(pkg, "/dev/null"),
    }
    for name, cmd in cases.items():
        outcome, _, detail = run(cmd)
        note("text and options", name, outcome, detail)
    outcome, _, detail = run(["chat", pkg, "--video", video], stdin=b"what \xff colour?\n/quit\n")
    note("text and options", "chat non-UTF-8 line", outcome, detail)


def hostile_trials(base, args, rng, run, note):
    """``args.trials`` random trials plus the fixed attack lists."""
    count = int(args.trials * 0.4)
    json_file_trials(base["pkg"], "manifest.json", "manifest field", count, rng, run, note,
                     base["video"])  # fmt: skip
    state_trials(base, count, rng, run, note)
    json_file_trials(base["ckpt"], "config.json", "checkpoint config.json",
                     int(args.trials * 0.2), rng, run, note, base["video"])  # fmt: skip
    graph_trials(base, run, note)
    output_trials(base, rng, run, note)
    text_trials(base, run, note)
