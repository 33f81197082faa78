"""``crosslmm-edge serve`` over loopback HTTP: video reuse and a bounded load test.

    python3 -m crosslmm_edge.benchmarks.serve_load [--package PKG] [--frames 32]
        [--clients 32] [--videos 4] [--questions 200] [--rounds 2] [--threads N]
        [--precision int4]

Starts the server as a child process (127.0.0.1, a free port, a looping live
file as its live source) and measures, all through HTTP with streamed answers:

1. reuse: for ``--reuse-videos`` fresh videos, the time to first token of a
   first question (decode, encode, prefix prefill) and of a second question
   about the same video from a new connection; medians and their ratio. The
   time to first token is when the stream's first chunk arrives: the server
   sends it once the first token is sampled, even if that token has no text
   yet (the time to the first text is reported too). A ``GET /health`` on a
   new connection gives the floor that loopback HTTP adds.
2. load: ``--clients`` concurrent clients ask ``--questions`` questions about
   ``--videos`` videos (every eighth about the live source), ``--rounds``
   times; errors, deliberate 503s (retried after Retry-After), p50/p95 time
   to first token, throughput, and the server's peak RSS in the first and the
   second half of the run.

Default package: the embedded model exported for ``--frames`` frames into a
temporary folder. Loopback only; every request has a timeout; the server is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LIVE = "live"


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's RSS every ``period_s`` on a thread; peaks by phase."""

    def __init__(self, pid: int, period_s: float = 0.1) -> None:
        self.pid, self.period_s = pid, period_s
        self.phase = "warm-up"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            value = rss_bytes(self.pid)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), value)


def start_server(
    package: Path,
    media: Path,
    live: Path,
    frames: int,
    port: int,
    threads: int,
    precision: str | None = None,
) -> subprocess.Popen:
    """``crosslmm-edge serve`` as a child process; returns once /health answers."""
    import httpx

    command = [
        sys.executable, "-m", "crosslmm_edge", "serve", str(package), "--port", str(port),
        "--media-dir", str(media), "--frames", str(frames), "--live", str(live), "--live-loop",
        "--window", "4", "--live-fps", "2", "--queue-size", "16", "--log-level", "warning",
        "--max-new-tokens", "8", "--threads", str(threads),
    ]  # fmt: skip
    if precision:
        command += ["--precision", precision]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not answer /health in 120 s")


def body(video: str, question: str) -> dict:
    """A streamed chat request about ``video``."""
    content = [
        {"type": "video_url", "video_url": {"url": video}},
        {"type": "text", "text": question},
    ]
    return {"messages": [{"role": "user", "content": content}], "stream": True, "max_tokens": 8}


async def ask(client, video: str, question: str) -> dict:
    """One streamed question: status, reuse, and the times to first token (client side:
    the first chunk, which the server sends once the first token is sampled; server side:
    ``x_crosslmm.ttft_s``) and to first text (the first chunk with non-empty content)."""
    started = time.perf_counter()
    first = first_text = server_ttft = server_queue = None
    async with client.stream("POST", "/v1/chat/completions", json=body(video, question)) as reply:
        if reply.status_code != 200:
            await reply.aread()
            return {"status": reply.status_code, "retry_after": reply.headers.get("Retry-After")}
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter() - started
            event = json.loads(line[6:])
            choices = event.get("choices") or [{}]
            if first is None and event.get("choices"):
                first = now
            if first_text is None and (choices[0].get("delta") or {}).get("content"):
                first_text = now
            if "ttft_s" in event.get("x_crosslmm", {}):
                server_ttft = event["x_crosslmm"]["ttft_s"]
                server_queue = event["x_crosslmm"]["queue_s"]
        ended = time.perf_counter() - started
        return {
            "status": 200,
            "ttft_s": first if first is not None else ended,
            "text_s": first_text if first_text is not None else ended,
            "server_ttft_s": server_ttft,
            "server_queue_s": server_queue,
            "reused": reply.headers.get("X-Video-Reused") == "true",
        }


async def measure_reuse(url: str, videos: list[str]) -> dict:
    """First vs second question TTFT per fresh video; the second from a new connection."""
    import httpx

    firsts, seconds, server_firsts, server_seconds = [], [], [], []
    text_seconds, queue_seconds, floors = [], [], []
    for video in videos:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            started = time.perf_counter()  # the HTTP floor: a trivial GET, a new connection
            (await client.get("/health")).raise_for_status()
            floors.append(time.perf_counter() - started)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            first = await ask(client, video, "what kind of shape is it?")
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            second = await ask(client, video, "what colour is the small dot?")
        assert first["status"] == second["status"] == 200, (first, second)
        assert not first["reused"] and second["reused"], (first, second)
        firsts.append(first["ttft_s"])
        seconds.append(second["ttft_s"])
        server_firsts.append(first["server_ttft_s"])
        server_seconds.append(second["server_ttft_s"])
        text_seconds.append(second["text_s"])
        queue_seconds.append(second["server_queue_s"])
    first_s, second_s = statistics.median(firsts), statistics.median(seconds)
    server_first, server_second = (
        statistics.median(server_firsts),
        statistics.median(server_seconds),
    )
    return {
        "videos": len(videos),
        "first_ttft_ms_median": first_s * 1000,
        "second_ttft_ms_median": second_s * 1000,
        "ratio_second_over_first": second_s / first_s,
        "ratios_per_video": [s / f for f, s in zip(firsts, seconds, strict=True)],
        "server_side_first_ms_median": server_first * 1000,
        "server_side_second_ms_median": server_second * 1000,
        "server_side_ratio": server_second / server_first,
        "second_queued_ms_median": statistics.median(queue_seconds) * 1000,
        "health_new_connection_ms_median": statistics.median(floors) * 1000,
        "second_first_text_ms_median": statistics.median(text_seconds) * 1000,
    }


async def load(url: str, clients: int, work: list[tuple[str, str]], sampler: RssSampler) -> dict:
    """``clients`` concurrent clients work through ``work``; 503s are retried after Retry-After."""
    import httpx

    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    results: list[dict] = []
    half = len(work) // 2

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while not queue.empty():
                video, question = queue.get_nowait()
                while True:
                    result = await ask(client, video, question)
                    results.append({**result, "video": video})
                    if result["status"] != 503:
                        break
                    await asyncio.sleep(float(result["retry_after"] or 1))
                done = sum(r["status"] == 200 for r in results)
                sampler.phase = "first half" if done < half else "second half"

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    wall = time.perf_counter() - started
    answered = [r for r in results if r["status"] == 200]
    ttfts = sorted(r["ttft_s"] for r in answered)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "clients": clients,
        "questions": len(work),
        "answered": len(answered),
        "statuses": statuses,
        "errors_other_than_503": sum(r["status"] not in (200, 503) for r in results),
        "live_questions": sum(r["video"] == LIVE for r in answered),
        "ttft_ms_p50": 1000 * ttfts[len(ttfts) // 2],
        "ttft_ms_p95": 1000 * ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "wall_s": wall,
        "questions_per_s": len(answered) / wall,
    }


def workload(videos: list[str], questions: int, rounds: int) -> list[tuple[str, str]]:
    """``questions * rounds`` questions over ``videos``; every eighth about the live source."""
    asked = ("what kind of shape is it?", "what colour is the small dot?", "which way?")
    work = []
    for index in range(questions * rounds):
        video = LIVE if index % 8 == 7 else videos[index % len(videos)]
        work.append((video, asked[index % len(asked)]))
    return work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", help="a package exported for >= --frames frames")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="the run is this many x questions")
    parser.add_argument("--reuse-videos", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="the server's intra-op threads")
    parser.add_argument("--precision", help="the server's --precision (default: the best)")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    import httpx

    from ..calibration.world.evaluate import write_scene_video
    from .cache_reuse import make_package

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        package = Path(args.package) if args.package else make_package(folder, None, args.frames)
        media = folder / "media"
        media.mkdir()
        names = [f"load-{i}.mp4" for i in range(args.videos)]
        names += [f"reuse-{i}.mp4" for i in range(args.reuse_videos)]
        for seed, name in enumerate(names, start=100):
            write_scene_video(media / name, seed, 0, args.frames)
        write_scene_video(folder / "live.mp4", 99, 0, args.frames)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        live = folder / "live.mp4"
        server = start_server(package, media, live, args.frames, port, args.threads, args.precision)
        try:
            report = {"frames": args.frames, "threads": args.threads, "cpu_count": os.cpu_count()}
            served = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
            report["artifacts"] = served["artifacts"]
            report["reuse"] = asyncio.run(measure_reuse(url, names[args.videos :]))
            print(json.dumps(report["reuse"], indent=1), flush=True)
            if args.rounds > 0:  # --rounds 0: the reuse measurement only
                report.update(_load_report(url, args, names[: args.videos], server.pid))
            report["health"] = httpx.get(f"{url}/health", timeout=10).json()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps({k: v for k, v in report.items() if k != "reuse"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _load_report(url: str, args: argparse.Namespace, videos: list[str], pid: int) -> dict:
    """The load test and the server's peak RSS in each half of it."""
    work = workload(videos, args.questions, args.rounds)
    with RssSampler(pid) as sampler:
        sampler.phase = "first half"
        report: dict[str, object] = {"load": asyncio.run(load(url, args.clients, work, sampler))}
    peaks = sampler.peaks
    first, second = peaks.get("first half", 0), peaks.get("second half", 0)
    report["rss_peak_mib"] = {k: v / 2**20 for k, v in peaks.items()}
    report["rss_second_over_first_half"] = second / first if first else None
    return report


if __name__ == "__main__":
    sys.exit(main())
