"""What the tests share: uploading a target, starting a fine-tuning job, waiting for it.

Deadlines here guard against hangs, never measure speed: on a loaded 2-core machine one job
has taken minutes, so a test waits for a job up to ``JOB_TIMEOUT`` unless it has a reason to
wait longer. How fast something runs is measured in bench/, not asserted by tests.
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from app.config import Settings
from app.jobs.service import claim_next_job
from app.jobs.worker import Lease, run_job
from app.main import create_app
from app.worker import JOB_KINDS
from tests.archives import (
    bundled_target_images,
    fashion_mnist_images,
    image_folder_entries,
    zip_bytes,
)

PROBLEM = "application/problem+json"
JOB_TIMEOUT = 600.0  # seconds: a hang guard for one job, not a bound on its speed
ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
LEASE = 2.0  # seconds: a short job lease, so that a lost lease shows within a test
# Why a job waits again, in its progress label (its error is None: it has not failed).
HANDED_BACK = "handed back, not counted as an attempt: "  # after a graceful stop


def waiting_because(why: str) -> str:
    """A re-queued job's progress label: why it waits for a worker again."""
    return f"waiting for a worker ({why})"


T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = JOB_TIMEOUT, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy (that value); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if value := check():
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout} s: {what or check}")
        time.sleep(0.1)


def upload_dataset(client: httpx.Client, images: dict[str, list[bytes]], name: str) -> str:
    """Upload ``images`` (PNG bytes by class) as a zip of class folders; the dataset id."""
    archive = zip_bytes(image_folder_entries(images))
    response = client.post("/v1/datasets", files={"file": (name, archive)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload_target(client: httpx.Client, name: str) -> str:
    """Upload a bundled target's training part as a zip of PNGs; the dataset id."""
    return upload_dataset(client, bundled_target_images(name), f"{name}.zip")


def upload_garments(client: httpx.Client, per_class: int = 10) -> str:
    """A small garments dataset (Fashion-MNIST, ``per_class`` images per class), uploaded."""
    return upload_dataset(client, fashion_mnist_images(per_class=per_class), "garments.zip")


def rank(client: httpx.Client, target: str, **options: object) -> dict:
    """POST /v1/rankings for the target (201 checked); the ranking."""
    response = client.post("/v1/rankings", json={"target_dataset_id": target, **options})
    assert response.status_code == 201, response.text
    return dict(response.json())


def start_job(client: httpx.Client, **body: object) -> dict:
    """POST /v1/finetunes with ``body`` (202 and its Location checked); the queued job."""
    response = client.post("/v1/finetunes", json=body)
    assert response.status_code == 202, response.text
    job = dict(response.json())
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    return job


def start_finetune(client: httpx.Client, target_id: str, epochs: int, source: str = "best") -> str:
    """Queue a manual fine-tune of ``epochs`` epochs (no early stopping); its job id."""
    return str(
        start_job(
            client, target_dataset_id=target_id, source_id=source, schedule="manual",
            epochs=epochs, patience=None,
        )["id"]
    )  # fmt: skip


def finetuned_model(client: httpx.Client, archive: bytes, source_name: str, epochs: int) -> dict:
    """The finished job of a manual fine-tune of the named source on an uploaded archive."""
    dataset = client.post("/v1/datasets", files={"file": ("garments.zip", archive)})
    assert dataset.status_code == 201, dataset.text
    sources = client.get("/v1/sources", params={"page_size": 200}).json()["items"]
    source = next(s for s in sources if s["name"] == source_name)
    job = client.post(
        "/v1/finetunes",
        json={
            "target_dataset_id": dataset.json()["id"], "source_id": source["id"],
            "schedule": "manual", "epochs": epochs, "patience": None,
        },
    )  # fmt: skip
    assert job.status_code == 202, job.text
    finished = wait_for_job(client, job.json()["id"])
    assert finished["status"] == "succeeded", finished
    return finished


def run_queued_jobs(client: TestClient) -> None:
    """Run every queued job of an in-process service in this process, as its worker would
    (an ``api`` test's service has no worker: spawning one costs seconds)."""
    state = client.app.state.service  # type: ignore[attr-defined]
    while True:
        with state.sessions() as session:
            job = claim_next_job(session, "test-worker", state.settings.job_lease_seconds)
        if job is None:
            return
        with Lease(state.sessions, state.settings, job.id, "test-worker") as lease:
            run_job(JOB_KINDS, state.sessions, state.store, torch.device("cpu"), job, lease)


def get_job(client: httpx.Client, job_id: str) -> dict:
    """GET /v1/jobs/{id} (200 checked). Sent again once where the server closed the kept-alive
    connection as the request went out (httpx does not retry that; urllib3 and p2l_client
    do, for a GET): seen once in a poll under load, the server alive and logging nothing."""
    try:
        response = client.get(f"/v1/jobs/{job_id}")
    except httpx.RemoteProtocolError:
        response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    until: tuple[str, ...] = ENDED,
    timeout: float = JOB_TIMEOUT,
) -> dict:
    """Poll the job until its status is one of ``until``; fail, with its progress, after
    ``timeout`` s (a hang guard: the default is generous on purpose)."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(client, job_id)
        if job["status"] in until:
            return job
        if time.monotonic() >= deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {timeout} s: {job['progress']}")
        time.sleep(0.2)


def wait_for_training(client: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT) -> dict:
    """Until the job runs and has reported a training epoch; fails if it ends first."""

    def training() -> dict | None:
        job = get_job(client, job_id)
        assert job["status"] in ACTIVE, job
        return job if job["status"] == "running" and job["progress"].get("epoch") else None

    return eventually(training, timeout, f"job {job_id} trains")


def lease_env(data_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of a service or worker process over ``data_dir``: this one's, less
    its P2L_ settings, with a short job lease and ``settings`` as P2L_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {"P2L_DATA_DIR": str(data_dir), "P2L_JOB_LEASE_SECONDS": str(LEASE)}
    env |= {f"P2L_{k.upper()}": str(v) for k, v in settings.items()}
    return env


def start_with_worker(data_dir: Path, **settings: object) -> TestClient:
    """A started in-process service over ``data_dir`` with its job worker (a real process);
    the caller stops it with ``__exit__``."""
    client = TestClient(
        create_app(Settings(_env_file=None, data_dir=data_dir, start_worker=True, **settings)),
        raise_server_exceptions=False,
    )
    client.__enter__()
    return client


def model_folders(data_dir: Path) -> set[str]:
    """The model folders in a local data dir."""
    folder = data_dir / "models"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def count_rows(data_dir: Path, table: type) -> int:
    """Rows of ``table`` in the SQLite database of the service over ``data_dir``."""
    engine = create_engine(f"sqlite:///{data_dir / 'p2l.db'}")
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(table))
    engine.dispose()
    return int(count or 0)
