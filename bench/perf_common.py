"""What the performance benchmarks share: real images on disk, interleaved timing, RSS, machine.

Every figure is a ratio against a baseline timed in the same invocation; runs of the
contenders are interleaved (A B A B ...) so that drift in the machine's load hits both.
"""

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from app.zoo.bundled import BUNDLED_DIR, manifest


def bundled_pixels() -> tuple[np.ndarray, np.ndarray]:
    """All bundled held-out target images (32 px) with 5-way labels."""
    info = manifest()
    if info is None:
        raise RuntimeError("the bundled zoo is missing (python -m bench.zoo build)")
    images, labels = [], []
    for entry in info["targets"]:
        data = np.load(BUNDLED_DIR / entry["file"])
        images.append(data["images"])
        labels.append(data["labels"])
    return np.concatenate(images), np.concatenate(labels)


def write_image_folder(root: Path, count: int, size: int = 96) -> dict[str, list[Path]]:
    """``count`` real images as ``size``-px PNG files in 5 class folders (ImageFolder layout)."""
    images, labels = bundled_pixels()
    files: dict[str, list[Path]] = {}
    for i in range(count):
        j = i % len(images)
        name = f"class{labels[j]}"
        (root / name).mkdir(parents=True, exist_ok=True)
        path = root / name / f"{i:05d}.png"
        Image.fromarray(images[j]).resize((size, size), Image.Resampling.BILINEAR).save(path)
        files.setdefault(name, []).append(path)
    return files


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict]:
    """Time each contender ``repeats`` times, round-robin; median, spread and every run (s).

    The first round is a warm-up (caches, thread pools, page cache) and is not counted.
    The order rotates every round, so no contender always runs after the same neighbour.
    """
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(repeats + 1):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            contenders[name]()
            if round_index:
                runs[name].append(time.perf_counter() - started)
    return {name: timing(times) for name, times in runs.items()}


def timing(times: list[float]) -> dict[str, Any]:
    """Median, min, max and all runs of a list of durations (seconds)."""
    return {  # microseconds kept: rankings take well under a millisecond
        "median_s": round(statistics.median(times), 7),
        "min_s": round(min(times), 7),
        "max_s": round(max(times), 7),
        "runs_s": [round(t, 7) for t in times],
    }


def rate(count: int, timed: dict[str, Any]) -> dict[str, float]:
    """Items per second at the median, with the spread (from the slowest and fastest runs)."""
    return {
        "per_s": round(count / timed["median_s"], 1),
        "per_s_min": round(count / timed["max_s"], 1),
        "per_s_max": round(count / timed["min_s"], 1),
    }


def ratio(faster: dict[str, Any], slower: dict[str, Any]) -> float:
    """How many times the first contender's median throughput is the second's."""
    return round(slower["median_s"] / faster["median_s"], 3)


def rss_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, MB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


def machine() -> dict[str, Any]:
    """CPUs, versions, GPU, and the load when the run started (shared machines: say it)."""
    load1, load5, _ = os.getloadavg()
    cpus = os.cpu_count() or 1
    return {
        "cpus": cpus,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
        "idle_at_start": load5 < 0.25 * cpus,
    }


ROOT = Path(__file__).parents[1]


def target_zip(root: Path, name: str) -> bytes:
    """A bundled benchmark target as a zip of class folders of PNGs (what a user uploads)."""
    data = np.load(BUNDLED_DIR / "targets" / f"{name}.npz")
    path = root / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, (pixels, label) in enumerate(zip(data["images"], data["labels"], strict=True)):
            png = io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG")
            archive.writestr(f"{data['class_names'][label]}/{i}.png", png.getvalue())
    return path.read_bytes()


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the service at ``url`` answers /healthz (at most 2 minutes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("service did not start")


@contextmanager
def running_service(work: Path, device: str = "cpu", **settings: str) -> Iterator[tuple[str, int]]:
    """``python -m app`` over a fresh data dir under ``work``, with P2L_* ``settings``
    (nothing else of P2L_* inherited); its URL and pid, stopped on exit."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {"P2L_DATA_DIR": str(work / "data"), "P2L_PORT": str(port), "P2L_DEVICE": device}
    env |= {f"P2L_{name.upper()}": value for name, value in settings.items()}
    with (work / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, server)
            yield url, server.pid
        finally:
            server.terminate()
            server.wait(60)


def section_main(
    run: Callable[[bool, str], dict[str, Any]],
    report: Callable[[dict[str, Any]], list[str]],
    description: str,
) -> None:
    """Command line of one performance section run alone: ``--quick``, ``--device``; prints
    the figures (JSON) and the section's markdown."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    result = run(args.quick, args.device)
    print(json.dumps(result, indent=1))
    print("\n".join(report(result)))
