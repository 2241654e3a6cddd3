"""Memory per process of the real service: idle, peak during a burst, and after it.

    python -m bench.perf_memory [--quick]

Starts ``python -m app`` (a temp data dir, its own job worker), records the resident memory
(VmRSS) of the API process and of its worker when idle, runs a burst (concurrent uploads of
a 2,000-image archive of 96-px PNGs, predictions, a synchronous evaluation, rankings, and a
fine-tune job for the worker), records each process's peak (VmHWM, reset before the burst)
and its RSS every second for 15 s after its part of the burst ended. The goal (issue #12):
within about 100 MB of idle 10 s after the burst.
"""

import io
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.perf_common import (
    interleaved,
    machine,
    ratio,
    rss_mb,
    running_service,
    section_main,
    write_image_folder,
)

WITHIN_MB = 100.0
AFTER_SECONDS = 15
SETTLE_SECONDS = 5.0


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid``, oldest first (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields[1] is the ppid; fields[19] the start time
            found.append((int(fields[19]), int(entry.name)))
    return [p for _, p in sorted(found)]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, queue = [], [pid]
    while queue:
        for child in children(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def others_mb(api: int, worker: int, field: str = "rss_mb") -> tuple[int, float]:
    """How many processes the service runs besides the API and its worker (decode pools,
    resource trackers), and their summed RSS (or peak) in MB."""
    total, count = 0.0, 0
    for pid in descendants(api):
        if pid == worker:
            continue
        try:
            total += rss_mb(pid)[field]
            count += 1
        except (OSError, KeyError):  # gone meanwhile
            continue
    return count, round(total, 1)


def worker_pid(api_pid: int, timeout: float = 60) -> int:
    """The job worker: the API's oldest multiprocessing-spawned child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(api_pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                return pid
        time.sleep(0.2)
    raise RuntimeError("no worker process found")


def reset_peak(pid: int) -> None:
    """Restart the process's peak (VmHWM) at its current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def folder_zip(root: Path, count: int) -> bytes:
    """``count`` real 96-px PNGs in 5 class folders (class0..class4), zipped."""
    files = write_image_folder(root, count)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for paths in files.values():
            for path in paths:
                archive.write(path, f"{path.parent.name}/{path.name}")
    return buffer.getvalue()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 600) -> dict:
    """Poll a job until it ends; its final state."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']}")
        time.sleep(0.3)
    return job


def fine_tune(client: httpx.Client, dataset_id: str, epochs: int) -> str:
    """Submit a manual-schedule fine-tune of the best source; the job id."""
    body = {
        "target_dataset_id": dataset_id,
        "source_id": "best",
        "schedule": "manual",
        "epochs": epochs,
        "patience": None,
    }
    response = client.post("/v1/finetunes", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def sample_after(measure: Callable[[], float], seconds: int, out: list[float]) -> None:
    """Append ``measure()`` (MB) at 0, 1, ..., ``seconds`` s from now."""
    start = time.monotonic()
    for second in range(seconds + 1):
        time.sleep(max(0.0, start + second - time.monotonic()))
        out.append(measure())


def summary(idle: float, warm_idle: float, peak: float, after: list[float]) -> dict[str, Any]:
    """The figures of one process, and whether it came back within WITHIN_MB of idle."""
    at_10 = after[min(10, len(after) - 1)]
    return {
        "idle_mb": idle,
        "warm_idle_mb": warm_idle,
        "peak_mb": peak,
        "after_1s_mb": after[1],
        "after_5s_mb": after[5],
        "after_10s_mb": at_10,
        "after_15s_mb": after[-1],
        "after_mb": after,
        "above_idle_at_10s_mb": round(at_10 - idle, 1),
        "within_100mb_at_10s": at_10 - idle <= WITHIN_MB,
    }


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Idle, peak and after-burst RSS of the API process and its worker (torch on ``device``)."""
    count = 500 if quick else 2000
    uploads = 2 if quick else 3
    predicts = 8 if quick else 24
    epochs = 1 if quick else 2
    started, host = time.perf_counter(), machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        archive = folder_zip(work / "big", count)
        # The model's own classes: the evaluation archive is its training set.
        small = folder_zip(work / "small", 400)
        predict_files = [
            ("files", (p.name, p.read_bytes()))
            for p in sorted((work / "small").rglob("*.png"))[:32]
        ]
        with running_service(work / "service", device) as (url, api):
            worker = worker_pid(api)
            time.sleep(SETTLE_SECONDS)
            idle = {
                "api": rss_mb(api)["rss_mb"],
                "worker": rss_mb(worker)["rss_mb"],
                "others": others_mb(api, worker)[1],
            }
            client = httpx.Client(base_url=url, timeout=600)
            # Warm-up: every path of the burst once (lazy imports, first model load).
            response = client.post("/v1/datasets", files={"file": ("s.zip", small)})
            assert response.status_code == 201, response.text
            model_job = wait_job(client, fine_tune(client, response.json()["id"], 1))
            assert model_job["status"] == "succeeded", model_job
            model_id = model_job["model_id"]
            client.post(f"/v1/models/{model_id}/predict", files=predict_files)
            time.sleep(SETTLE_SECONDS)
            warm = {
                "api": rss_mb(api)["rss_mb"],
                "worker": rss_mb(worker)["rss_mb"],
                "others": others_mb(api, worker)[1],
            }
            for pid in [api, *descendants(api)]:
                reset_peak(pid)

            def upload(_: int) -> str:
                r = client.post("/v1/datasets", files={"file": ("big.zip", archive)})
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

            def predict(_: int) -> None:
                r = client.post(f"/v1/models/{model_id}/predict", files=predict_files)
                assert r.status_code == 200, r.text

            def evaluate() -> None:
                r = client.post(f"/v1/models/{model_id}/evaluate", files={"file": ("e.zip", small)})
                assert r.status_code == 200, r.text

            def rank(dataset_id: str) -> None:
                body = {"target_dataset_id": dataset_id, "top_k": 5}
                r = client.post("/v1/rankings", json=body)
                assert r.status_code in (200, 201), r.text

            burst_started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                uploaded = pool.submit(lambda: list(pool.map(upload, range(uploads))))
                predicted = [pool.submit(predict, i) for i in range(predicts)]
                evaluated = pool.submit(evaluate)
                datasets = uploaded.result()
                job_id = fine_tune(client, datasets[0], epochs)
                ranked = [pool.submit(rank, d) for d in datasets]
                for future in [*predicted, evaluated, *ranked]:
                    future.result()
            api_burst_s = time.perf_counter() - burst_started
            api_peak = rss_mb(api)["peak_rss_mb"]
            others_count, others_peak = others_mb(api, worker, "peak_rss_mb")
            after: dict[str, list[float]] = {"api": [], "worker": [], "others": []}
            samplers = [
                threading.Thread(
                    target=sample_after,
                    args=(lambda: rss_mb(api)["rss_mb"], AFTER_SECONDS, after["api"]),
                ),
                threading.Thread(
                    target=sample_after,
                    args=(lambda: others_mb(api, worker)[1], AFTER_SECONDS, after["others"]),
                ),
            ]
            for sampler in samplers:
                sampler.start()
            job = wait_job(client, job_id)
            assert job["status"] == "succeeded", job
            worker_peak = rss_mb(worker)["peak_rss_mb"]
            sample_after(lambda: rss_mb(worker)["rss_mb"], AFTER_SECONDS, after["worker"])
            for sampler in samplers:
                sampler.join()
            client.close()
        cost = trim_cost(work, archive, uploads, device, repeats=2 if quick else 3)
    result = {
        "machine": host,
        "images_per_upload": count,
        "concurrent_uploads": uploads,
        "predict_requests": predicts,
        "finetune_epochs": epochs,
        "api_burst_seconds": round(api_burst_s, 1),
        "api": summary(idle["api"], warm["api"], api_peak, after["api"]),
        "worker": summary(idle["worker"], warm["worker"], worker_peak, after["worker"]),
        # Decode pools and resource trackers: summed; the peak sums those alive at the end.
        "others": summary(idle["others"], warm["others"], others_peak, after["others"])
        | {"processes_at_burst_end": others_count},
        "cost": cost,
        "run_seconds": round(time.perf_counter() - started, 1),
    }
    return result


def trim_cost(work: Path, archive: bytes, uploads: int, device: str, repeats: int) -> dict:
    """What the memory settings cost: the same upload burst, interleaved, on a service with
    the defaults and on one with them off (no trims, glibc's default arenas), both running;
    each one's API RSS 10 s after its last burst."""
    variants = {
        "defaults": {},
        "off": {"memory_trim_seconds": "0", "malloc_arena_max": "0"},
    }
    with ExitStack() as stack:
        services = {
            name: stack.enter_context(running_service(work / f"cost-{name}", device, **settings))
            for name, settings in variants.items()
        }
        clients = {
            name: stack.enter_context(httpx.Client(base_url=url, timeout=600))
            for name, (url, _) in services.items()
        }

        def burst(client: httpx.Client) -> None:
            with ThreadPoolExecutor(max_workers=uploads) as pool:
                for response in pool.map(
                    lambda _: client.post("/v1/datasets", files={"file": ("b.zip", archive)}),
                    range(uploads),
                ):
                    assert response.status_code == 201, response.text

        timed = interleaved({name: partial(burst, c) for name, c in clients.items()}, repeats)
        time.sleep(10)
        rss = {name: rss_mb(pid)["rss_mb"] for name, (_, pid) in services.items()}
    return {
        "uploads_per_burst": uploads,
        "timings": timed,
        "defaults_vs_off_speed": ratio(timed["defaults"], timed["off"]),
        "api_rss_10s_after_mb": rss,
    }


def report(result: dict) -> list[str]:
    """Markdown lines: one row per process."""
    lines = [
        "## Memory per process (RSS, MB)",
        "",
        f"Burst: {result['concurrent_uploads']} concurrent uploads of "
        f"{result['images_per_upload']} 96-px PNGs, {result['predict_requests']} predictions "
        f"of 32 images, a synchronous evaluation (400 images), rankings "
        f"({result['api_burst_seconds']} s in the API), and a {result['finetune_epochs']}-epoch "
        "fine-tune job in the worker. Idle: 5 s after start; warm idle: after one small "
        "upload, fine-tune and prediction. Peak: VmHWM during the burst. After: from the end "
        "of the process's part of the burst. Other processes: the service's other descendants "
        "(decode pools, multiprocessing resource trackers), summed.",
        "",
        "| process | idle | warm idle | peak | after 1 s | after 5 s | after 10 s | "
        "10 s vs idle (goal <= +100) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "api": "API",
        "worker": "job worker",
        "others": f"{result['others']['processes_at_burst_end']} other processes (summed)",
    }
    for name, label in labels.items():
        r = result[name]
        verdict = "met" if r["within_100mb_at_10s"] else "missed"
        lines.append(
            f"| {label} | {r['idle_mb']:.0f} | {r['warm_idle_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['after_1s_mb']:.0f} | {r['after_5s_mb']:.0f} | {r['after_10s_mb']:.0f} | "
            f"{r['above_idle_at_10s_mb']:+.0f} ({verdict}) |"
        )
    cost = result["cost"]
    t = cost["timings"]
    rss = cost["api_rss_10s_after_mb"]
    lines += [
        "",
        f"Cost of the memory settings (trims, 2 arenas): a burst of {cost['uploads_per_burst']} "
        f"concurrent uploads takes {t['defaults']['median_s']} s "
        f"({t['defaults']['min_s']}-{t['defaults']['max_s']}) with them, "
        f"{t['off']['median_s']} s ({t['off']['min_s']}-{t['off']['max_s']}) without "
        f"(P2L_MEMORY_TRIM_SECONDS=0, P2L_MALLOC_ARENA_MAX=0), interleaved, two services "
        f"side by side: {cost['defaults_vs_off_speed']}x the speed. API RSS 10 s after: "
        f"{rss['defaults']:.0f} MB with, {rss['off']:.0f} MB without.",
    ]
    load = result["machine"]["load_average_1m_5m"]
    lines += ["", f"Load average at start (1 m, 5 m): {load}; run {result['run_seconds']} s."]
    return lines


if __name__ == "__main__":
    section_main(run, report, __doc__.splitlines()[0])
