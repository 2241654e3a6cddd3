"""How close the 202's estimate comes to the time a job actually takes.

    python -m bench.estimates     # writes bench/results/estimates.json and estimates.md

A real service (in-process, with its real worker process) over a fresh data dir, so the
first job is estimated from the prior and the rest from what the worker measured. Jobs of
different sizes run one after another (no queueing): three bundled targets, manual and
auto schedules, with and without the baseline, early stopping off (an estimate counts every
planned epoch). Actual time is the job's own (from its worker taking it to its end,
``progress.elapsed_seconds``), which is what the estimate predicts. About 3-5 minutes on
two busy CPU cores.
"""

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.zoo.bundled import export_target

RESULTS = Path(__file__).parent / "results"

# (target, options): small to large, manual and auto, with and without the baseline.
JOBS: list[tuple[str, dict[str, Any]]] = [
    ("wesnoth_small", {"schedule": "manual", "epochs": 3}),  # the prior's
    ("wesnoth_small", {"schedule": "manual", "epochs": 3}),
    ("fashion", {"schedule": "manual", "epochs": 5}),
    ("hedgewars", {"schedule": "auto", "auto_epochs": 2, "epochs": 5}),
    ("fashion", {"schedule": "manual", "epochs": 15, "baseline": True}),
    ("wesnoth_small", {"schedule": "auto", "auto_epochs": 3, "epochs": 10, "baseline": True}),
    ("hedgewars", {"schedule": "manual", "epochs": 30}),
    ("fashion", {"schedule": "auto", "auto_epochs": 4, "epochs": 20}),
]


def run_job(client: TestClient, target_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Submit one fine-tune, wait for its end; its estimate and its actual time."""
    body = {"target_dataset_id": target_id, "source_id": "best", "patience": None, **options}
    response = client.post("/v1/finetunes", json=body)
    response.raise_for_status()
    job = response.json()
    while (current := client.get(f"/v1/jobs/{job['id']}").json())["status"] in (
        "queued", "running",
    ):  # fmt: skip
        time.sleep(0.2)
    if current["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {current['status']}: {current['error']}")
    estimate, actual = job["estimate"], current["progress"]["elapsed_seconds"]
    return {
        "options": options,
        "basis": estimate["basis"],
        "train_images": estimate["train_images"],
        "val_images": estimate["val_images"],
        "epochs_planned": estimate["epochs_planned"],
        "epochs_run": current["progress"]["epochs_done"],
        "estimate_seconds": estimate["seconds"],
        "actual_seconds": actual,
        "ratio": round(estimate["seconds"] / actual, 3),
        "error_percent": round(100 * (estimate["seconds"] - actual) / actual, 1),
    }


def main() -> None:
    """Run the jobs through a fresh service and write the comparison."""
    started = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp) / "data", start_worker=True)
        with TestClient(create_app(settings)) as client:
            targets: dict[str, str] = {}
            for name in dict.fromkeys(name for name, _ in JOBS):
                archive, _ = export_target(name, Path(tmp) / "targets")
                with archive.open("rb") as file:
                    uploaded = client.post("/v1/datasets", files={"file": (archive.name, file)})
                uploaded.raise_for_status()
                targets[name] = uploaded.json()["id"]
            for name, options in JOBS:
                row = {"target": name, **run_job(client, targets[name], options)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    measured = [abs(r["error_percent"]) for r in rows if r["basis"] == "measured"]
    prior = [abs(r["error_percent"]) for r in rows if r["basis"] == "prior"]
    results = {
        "benchmark": "estimates",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            # Whether the machine was idle: the 1-minute load average before and after.
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
        },
        "jobs": rows,
        "median_abs_error_percent_measured": round(statistics.median(measured), 1)
        if measured
        else None,
        "max_abs_error_percent_measured": max(measured) if measured else None,
        "abs_error_percent_prior": prior,
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "estimates.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Estimated vs actual job time",
        "",
        f"Machine: {results['machine']}; the whole bench took {results['bench_seconds']} s.",
        "Actual: from the worker taking the job to its end. Early stopping off.",
        "",
        "| target | options | basis | train / val images | epochs | estimate s | actual s "
        "| estimate / actual |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        options = ", ".join(f"{k} {v}" for k, v in r["options"].items())
        lines.append(
            f"| {r['target']} | {options} | {r['basis']} | {r['train_images']} / "
            f"{r['val_images']} | {r['epochs_run']} | {r['estimate_seconds']} | "
            f"{r['actual_seconds']} | {r['ratio']} |"
        )
    lines += [
        "",
        f"Median absolute error of the measured estimates: "
        f"{results['median_abs_error_percent_measured']} % (largest "
        f"{results['max_abs_error_percent_measured']} %); the prior's (first job, nothing "
        f"measured yet): {', '.join(f'{p} %' for p in prior) or 'none'}.",
    ]
    (RESULTS / "estimates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
