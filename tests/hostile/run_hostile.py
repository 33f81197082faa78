"""The hostile run, by hand (minutes; not part of the CI suite).

    python3 tests/hostile/run_hostile.py --work /tmp/hostile [--kills 20] [--trials 300]

Part 1 kills ``export``, ``quantize`` and state saving with SIGKILL at random
moments and checks that the target is the old artifact or a complete new
one, and that the next run leaves no temporary behind. Part 2 runs hundreds
of hostile trials through the CLI (manifests, configs, states, graphs, output
paths, text): each must end in exit 0 or in exit 2 with one ``error:`` line;
anything else (a traceback, another code, a hang) counts as a crash. Prints
counts by class and writes every trial to ``WORK/hostile.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.hostile.kills import kill_trials
from tests.hostile.trials import hostile_trials

CLI = [sys.executable, "-m", "crosslmm_edge"]


def run(argv: list, timeout: float = 120, stdin: bytes | None = None) -> tuple[str, int, str]:
    """(outcome, exit code, stderr) of one CLI run: ok, refused or crash."""
    try:
        done = subprocess.run(
            [*CLI, *map(str, argv)], capture_output=True, timeout=timeout, input=stdin
        )
    except subprocess.TimeoutExpired:
        return "crash", -1, "hang"
    err = done.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    if "Traceback" in err:
        return "crash", done.returncode, err[-800:]
    if done.returncode == 0:
        return "ok", 0, err
    if done.returncode == 2 and len(lines) == 1:
        return "refused", 2, lines[0]
    return "crash", done.returncode, err[-800:]


def prepare(work: Path) -> dict[str, Path]:
    """A package, a checkpoint copy, a video and a saved state to attack."""
    from crosslmm_edge.models import embedded_model_dir

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = {"ckpt": work / "ckpt", "pkg": work / "pkg", "video": work / "v.mp4"}
    shutil.copytree(embedded_model_dir(), base["ckpt"])
    for argv in (
        ["export", base["ckpt"], "--out", base["pkg"]],
        ["synth-video", "--out", base["video"], "--seed", 3],
        ["ask", base["pkg"], "--video", base["video"], "--question", "q",
         "--save-video-state", work / "good.npz"],
    ):  # fmt: skip
        outcome, _, err = run(argv)
        assert outcome == "ok", (argv, err)
    base["state"] = work / "good.npz"
    return base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/crosslmm-hostile"))
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per writer")
    parser.add_argument("--trials", type=int, default=300, help="hostile CLI trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="export quantize state trials")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.time()
    base = prepare(args.work)
    log = (args.work / "hostile.jsonl").open("w")
    counts: Counter = Counter()

    def note(group: str, name: str, outcome: str, detail: str) -> None:
        counts[(group, outcome)] += 1
        log.write(json.dumps({"group": group, "trial": name, "outcome": outcome,
                              "detail": detail[:600]}) + "\n")  # fmt: skip
        log.flush()
        if outcome == "crash":
            print(f"CRASH {group} {name}: {detail[:400]}", file=sys.stderr)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    kill_trials(base, args, rng, run, note)
    if "trials" not in args.skip:
        hostile_trials(base, args, rng, run, note)
    groups = sorted({g for g, _ in counts})
    print(f"hostile run: {time.time() - start:.0f} s, seed {args.seed}")
    for group in groups:
        row = {o: counts[(group, o)] for o in ("ok", "refused", "crash", "bad-artifact", "litter")}
        print(f"  {group:28s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    total = {o: sum(v for (g, oo), v in counts.items() if oo == o) for o in ("ok", "refused")}
    bad = sum(v for (g, o), v in counts.items() if o in ("crash", "bad-artifact", "litter"))
    print(f"  total trials={sum(counts.values())} ok={total['ok']} refused={total['refused']} "
          f"crashes/bad={bad}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
