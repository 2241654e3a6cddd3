"""What open job event streams cost the rest of the API.

A real server (no worker, so the watched job stays queued and its streams stay idle) is
timed on plain requests (GET /v1/jobs/{id}, GET /v1/reference) with no stream open, then
while 300 clients try to open a stream: once with the default bound (P2L_MAX_EVENT_STREAMS,
64: the rest get 503) and once with the bound raised to 300 (all open). Latencies are
medians and 99th percentiles of sequential requests from one client, measured in the same
invocation, so the ratios compare like with like on this (shared) machine.

    python -m bench.streams        # writes bench/results/streams.json and streams.md
    python -m bench.streams --baseline-tree DIR   # adds a row served by another checkout
                                                  # (e.g. the code before streams were bounded)
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.perf_common import ROOT, free_port, target_zip, wait_until_up

RESULTS = Path(__file__).parent / "results"
STREAM_CLIENTS = 300
REQUESTS = 400


def latencies(client: httpx.Client, paths: list[str], count: int) -> dict[str, float]:
    """Median and p99 in ms of ``count`` sequential GETs cycling over ``paths``."""
    timings = []
    for i in range(count):
        started = time.perf_counter()
        response = client.get(paths[i % len(paths)])
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    timings.sort()
    return {
        "median_ms": round(statistics.median(timings), 2),
        "p99_ms": round(timings[int(0.99 * (len(timings) - 1))], 2),
    }


class StreamCrowd:
    """``clients`` event-stream clients on a background event loop, holding their streams."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.statuses: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    async def _one(self, client: httpx.AsyncClient, ready: asyncio.Queue[int]) -> None:
        async with client.stream("GET", self.url) as response:
            await ready.put(response.status_code)
            if response.status_code == 200:
                await self.stop.wait()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients + 10)
        ready: asyncio.Queue[int] = asyncio.Queue()
        async with httpx.AsyncClient(limits=limits, timeout=None) as client:
            tasks = [asyncio.create_task(self._one(client, ready)) for _ in range(self.clients)]
            for _ in range(self.clients):
                self.statuses.append(await ready.get())
            await asyncio.gather(*tasks)

    def __enter__(self) -> "StreamCrowd":
        self.thread.start()
        deadline = time.monotonic() + 60
        while len(self.statuses) < self.clients and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def scenario(max_streams: int, tree: Path = ROOT) -> dict[str, Any]:
    """Plain-request latency alone, then with STREAM_CLIENTS trying to stream."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "P2L_DATA_DIR": f"{tmp}/data",
            "P2L_PORT": str(port),
            "P2L_START_WORKER": "false",
            "P2L_MAX_EVENT_STREAMS": str(max_streams),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "app"], env={**env, "PYTHONPATH": str(tree)}, cwd=tree,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url)
            client = httpx.Client(base_url=url, timeout=60)
            archive = target_zip(Path(tmp), "fashion")
            target = client.post("/v1/datasets", files={"file": ("t.zip", archive)}).json()["id"]
            job = client.post("/v1/finetunes", json={"target_dataset_id": target}).json()["id"]
            paths = [f"/v1/jobs/{job}", "/v1/reference"]
            latencies(client, paths, 50)  # warm up
            alone = latencies(client, paths, REQUESTS)
            with StreamCrowd(f"{url}/v1/jobs/{job}/events", STREAM_CLIENTS) as crowd:
                crowded = latencies(client, paths, REQUESTS)
            statuses = crowd.statuses
        finally:
            server.terminate()
            server.wait(30)
    return {
        "served_by": f"{'this checkout' if tree == ROOT else 'baseline'} ({_commit(tree)})",
        "max_event_streams": max_streams if tree == ROOT else "unbounded (baseline tree)",
        "streams_open": statuses.count(200),
        "streams_refused_503": statuses.count(503),
        "no_stream": alone,
        "with_streams": crowded,
        "p99_ratio": round(crowded["p99_ms"] / alone["p99_ms"], 2),
        "median_ratio": round(crowded["median_ms"] / alone["median_ms"], 2),
    }


def _commit(tree: Path) -> str:
    """The short commit a checkout is at."""
    command = ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


def report(results: dict[str, Any]) -> str:
    """The Markdown table of the results."""
    lines = [
        "# Event streams: what idle streams cost the rest of the API",
        "",
        f"{STREAM_CLIENTS} clients try to open `GET /v1/jobs/{{id}}/events` on an idle job; "
        f"{REQUESTS} sequential GETs (`/v1/jobs/{{id}}`, `/v1/reference`) are timed before "
        f"and while they hold their streams. Machine: {results['machine']}.",
        "",
        "| served by | P2L_MAX_EVENT_STREAMS | open | refused (503) | median alone | p99 alone "
        "| median with streams | p99 with streams | p99 ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["scenarios"]:
        lines.append(
            f"| {row['served_by']} | {row['max_event_streams']} | {row['streams_open']} | "
            f"{row['streams_refused_503']} | {row['no_stream']['median_ms']} ms | "
            f"{row['no_stream']['p99_ms']} ms | {row['with_streams']['median_ms']} ms | "
            f"{row['with_streams']['p99_ms']} ms | {row['p99_ratio']}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the scenarios and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-tree", type=Path, help="also serve from this checkout")
    baseline = parser.parse_args().baseline_tree
    scenarios = [scenario(64), scenario(STREAM_CLIENTS)]
    if baseline is not None:
        scenarios.append(scenario(STREAM_CLIENTS, baseline.resolve()))
    results = {
        "benchmark": "streams",
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "scenarios": scenarios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streams.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "streams.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
