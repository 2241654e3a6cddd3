"""Job leases with real processes and real SQLite: a killed API, two workers, a lost lease."""

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import build_state
from tests.helpers import (
    HANDED_BACK,
    JOB_TIMEOUT,
    LEASE,
    eventually,
    lease_env,
    model_folders,
    start_finetune,
    upload_garments,
    wait_for_job,
    waiting_because,
)
from tests.servers import free_port, local_url, spawn, uvicorn_args, wait_healthy

STOPPED = waiting_because(HANDED_BACK + "its worker was stopped (SIGTERM)")


def job_row(data_dir: Path, job_id: str) -> dict:
    """The job's row, read straight from the database file, with ``holder_pid``: the process
    of the worker that holds it, from its heartbeat row."""
    with sqlite3.connect(data_dir / "p2l.db", timeout=30) as db:
        db.row_factory = sqlite3.Row
        query = (
            "SELECT jobs.*, workers.pid AS holder_pid FROM jobs "
            "LEFT JOIN workers ON workers.id = jobs.worker_id WHERE jobs.id = ?"
        )
        return dict(db.execute(query, (job_id,)).fetchone())


def gone(pid: int) -> bool:
    """The process exited (a zombie that nobody reaped counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def kill_if_alive(pid: int | None) -> None:
    if pid is not None and not gone(pid):
        os.kill(pid, signal.SIGKILL)


def training(data_dir: Path, job_id: str, attempt: int | None = None) -> dict | None:
    """The job's row once it runs (the given attempt) and is in a training epoch (progress
    names its epoch; steps come and go between epochs, which may take milliseconds)."""
    row = job_row(data_dir, job_id)
    assert row["status"] in ("queued", "running"), row
    if attempt is not None and row["attempts"] != attempt:
        return None
    in_epoch = json.loads(row["progress"] or "{}").get("epoch") is not None
    return row if row["status"] == "running" and in_epoch else None


@pytest.mark.system
def test_a_killed_api_hands_its_job_back_once_and_its_worker_exits(
    make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path, processes: list
) -> None:
    port = free_port()
    api_log = tmp_path / "api.log"
    api_args = uvicorn_args(port, "--host", "127.0.0.1")
    api = spawn(api_args, lease_env(data_dir, start_worker="true"), api_log)
    processes.append(api)
    first_worker = None
    try:
        wait_healthy(api, local_url(port), api_log, 90)
        with httpx.Client(base_url=local_url(port), timeout=30) as http:
            job_id = start_finetune(http, upload_garments(http), epochs=1000)
            first = eventually(lambda: training(data_dir, job_id), JOB_TIMEOUT, "the job trains")
        first_worker = first["holder_pid"]
        assert first_worker != api.pid

        api.send_signal(signal.SIGKILL)  # the API, not its worker
        api.wait(10)
        eventually(lambda: gone(first_worker), 60, "the orphaned worker exits")
        released = job_row(data_dir, job_id)
        assert released["status"] == "queued" and released["worker_id"] is None, released
        assert released["attempts"] == 1
        # Not failed, so no error: why it waits again is in its progress label.
        assert released["error"] is None, released
        assert "re-queued after attempt 1 of 2" in json.loads(released["progress"])["label"]

        # A new API on the same data: its worker runs the job again, alone.
        client = make_client(start_worker=True, job_lease_seconds=LEASE)
        second = eventually(lambda: training(data_dir, job_id, attempt=2), JOB_TIMEOUT, "attempt 2")
        assert second["worker_id"] != first["worker_id"]
        assert second["holder_pid"] == client.app.state.service.runner.pid != first_worker
        # A graceful stop hands the job back on purpose: that run does not count, so the
        # job is queued again, not failed, though that was its last attempt.
        client.__exit__(None, None, None)
        assert gone(second["holder_pid"])
        final = job_row(data_dir, job_id)
        assert (final["status"], final["worker_id"], final["attempts"]) == ("queued", None, 1)
        assert final["error"] is None, final
        assert json.loads(final["progress"])["label"] == STOPPED
        assert model_folders(data_dir) == set()
    finally:
        kill_if_alive(first_worker)


@pytest.mark.system
def test_graceful_stops_never_use_up_a_jobs_attempts(
    make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path, processes: list
) -> None:
    # One attempt only: before, the first graceful stop failed the job.
    limits = {"job_lease_seconds": LEASE, "job_max_attempts": 1}
    client = make_client(**limits)  # no worker of its own
    # Long enough to be caught training, short enough to then run to its end.
    job_id = start_finetune(client, upload_garments(client), epochs=60)

    # A worker of its own, stopped as a deploy stops it (SIGTERM)...
    worker = spawn(["-m", "app.worker"], lease_env(data_dir, **limits), tmp_path / "w1.log")
    processes.append(worker)
    first = eventually(lambda: training(data_dir, job_id, attempt=1), JOB_TIMEOUT, "run 1 trains")
    assert first["holder_pid"] == worker.pid
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 128 + signal.SIGTERM
    row = job_row(data_dir, job_id)
    assert (row["status"], row["worker_id"], row["attempts"]) == ("queued", None, 0), row
    assert row["error"] is None and json.loads(row["progress"])["label"] == STOPPED, row

    # ... and the worker of a service that stops gracefully: the job is handed back again.
    service = make_client(start_worker=True, **limits)
    eventually(lambda: training(data_dir, job_id, attempt=1), JOB_TIMEOUT, "run 2 trains")
    service.__exit__(None, None, None)
    row = job_row(data_dir, job_id)
    assert (row["status"], row["worker_id"], row["attempts"]) == ("queued", None, 0), row
    assert row["error"] is None and json.loads(row["progress"])["label"] == STOPPED, row

    # Two hand-backs, one attempt allowed: the job still runs, to its end.
    last = spawn(["-m", "app.worker"], lease_env(data_dir, **limits), tmp_path / "w3.log")
    processes.append(last)
    eventually(
        lambda: job_row(data_dir, job_id)["status"] not in ("queued", "running"),
        JOB_TIMEOUT,
        "run 3 ends",
    )
    row = job_row(data_dir, job_id)
    assert (row["status"], row["attempts"], row["holder_pid"]) == ("succeeded", 1, last.pid), row
    assert row["error"] is None and model_folders(data_dir) == {row["model_id"]}


@pytest.mark.system
def test_two_workers_run_two_jobs_once_each(
    make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path, processes: list
) -> None:
    client = make_client(job_lease_seconds=LEASE)  # no worker of its own
    target_id = upload_garments(client)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [spawn(["-m", "app.worker"], lease_env(data_dir), log) for log in logs]
    processes.extend(workers)
    eventually(
        lambda: all("ready" in log.read_text() for log in logs), JOB_TIMEOUT, "workers ready"
    )

    # Long enough (several seconds) that the first worker is still busy when the second
    # polls: each job then runs on its own worker, even on busy shared cores.
    jobs = [start_finetune(client, target_id, epochs=60) for _ in range(2)]
    for job_id in jobs:
        wait_for_job(client, job_id)
    rows = [job_row(data_dir, job_id) for job_id in jobs]
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"], rows
    assert {row["holder_pid"] for row in rows} == {worker.pid for worker in workers}
    assert rows[0]["worker_id"] and rows[1]["worker_id"]
    assert rows[0]["worker_id"] != rows[1]["worker_id"]
    assert [row["attempts"] for row in rows] == [1, 1]
    # Each job ran exactly once: one worker logged it, once.
    runs = [log.read_text().count(f"running job {job_id}") for job_id in jobs for log in logs]
    assert sorted(runs) == [0, 0, 1, 1], runs
    assert model_folders(data_dir) == {row["model_id"] for row in rows}


@pytest.mark.system
def test_a_worker_keeps_its_job_until_its_lease_is_taken_then_publishes_nothing(
    make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path, processes: list
) -> None:
    client = make_client(job_lease_seconds=LEASE)
    target_id = upload_garments(client)
    worker = spawn(["-m", "app.worker"], lease_env(data_dir), tmp_path / "worker.log")
    processes.append(worker)
    long_job = start_finetune(client, target_id, epochs=1000)
    running = eventually(lambda: training(data_dir, long_job), JOB_TIMEOUT, "the job trains")

    # Another API starting over the same data leaves a job with a live lease alone, and
    # the lease outlives its length because the worker renews it.
    sibling = build_state(
        Settings(_env_file=None, data_dir=data_dir, start_worker=True, job_lease_seconds=LEASE)
    )
    sibling.engine.dispose()
    time.sleep(2 * LEASE)
    row = job_row(data_dir, long_job)
    assert row["status"] == "running" and row["worker_id"] == running["worker_id"], row
    assert row["attempts"] == 1

    # Its lease is taken (as if reaped and claimed elsewhere): the worker must stop
    # training and keep nothing; it is then free for the next job.
    in_an_hour = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    with sqlite3.connect(data_dir / "p2l.db", timeout=30) as db:
        db.execute(
            "UPDATE jobs SET worker_id = 'another-worker', lease_expires_at = ? WHERE id = ?",
            (in_an_hour.isoformat(" ", "microseconds"), long_job),
        )
    quick_job = start_finetune(client, target_id, epochs=1)
    eventually(
        lambda: client.get(f"/v1/jobs/{quick_job}").json()["status"] == "succeeded",
        JOB_TIMEOUT,
        "the worker drops the lost job and runs the next",
    )
    row = job_row(data_dir, long_job)
    assert (row["status"], row["worker_id"]) == ("running", "another-worker"), row
    assert row["model_id"] is None
    quick_model = job_row(data_dir, quick_job)["model_id"]
    assert model_folders(data_dir) == {quick_model}
    assert [m["id"] for m in client.get("/v1/models").json()["items"]] == [quick_model]


@pytest.mark.api
def test_expired_leases_are_requeued_then_failed(make_client: Callable[..., TestClient]) -> None:
    from app.jobs.service import (
        claim_next_job,
        finish_job,
        reap_expired_leases,
        renew_lease,
        submit_job,
    )
    from app.models import Job

    state = make_client(import_bundled_zoo=False).app.state.service

    def expire(job_id: str, lease: datetime | None) -> None:
        with state.sessions() as session:
            session.get(Job, job_id).lease_expires_at = lease
            session.commit()

    with state.sessions() as session:
        job_id = submit_job(session, "finetune", {}).id
        assert claim_next_job(session, "worker-a", 60).attempts == 1
        assert reap_expired_leases(session, max_attempts=2) == (0, 0)  # a live lease stays
        expire(job_id, datetime.now(UTC) - timedelta(seconds=1))
        assert reap_expired_leases(session, max_attempts=2) == (1, 0)
        job = session.get(Job, job_id)
        session.refresh(job)
        assert (job.status, job.worker_id, job.attempts) == ("queued", None, 1)
        assert job.error is None
        assert job.progress["label"] == waiting_because(
            "re-queued after attempt 1 of 2: its worker stopped renewing its lease"
        )

        assert claim_next_job(session, "worker-b", 60).attempts == 2
        # The first worker comes back: its lease is gone, nothing of it is accepted.
        assert not renew_lease(session, job_id, "worker-a", 60)
        assert not finish_job(session, job_id, "worker-a", "succeeded")
        assert renew_lease(session, job_id, "worker-b", 60)
        expire(job_id, None)  # no lease at all (a row from before leases): expired too
        assert reap_expired_leases(session, max_attempts=2) == (0, 1)
        session.refresh(job)
        assert (job.status, job.attempts, job.finished_at is not None) == ("failed", 2, True)
        assert job.error == "its worker stopped renewing its lease (attempt 2 of 2)"


@pytest.mark.api
def test_a_job_over_the_time_limit_is_failed_with_the_reason(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    from app.jobs.service import claim_next_job
    from app.jobs.worker import Lease, run_job
    from app.worker import JOB_KINDS

    client = make_client(job_lease_seconds=LEASE)
    state = client.app.state.service
    job_id = start_finetune(client, upload_garments(client), epochs=1000)
    settings = state.settings.model_copy(update={"job_time_limit_seconds": 1.0})
    with state.sessions() as session:
        job = claim_next_job(session, "worker-t", LEASE)

    def work() -> None:
        with Lease(state.sessions, settings, job.id, "worker-t") as lease:
            run_job(JOB_KINDS, state.sessions, state.store, torch.device("cpu"), job, lease)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(JOB_TIMEOUT)
    assert not thread.is_alive(), "training went on past the time limit"
    row = job_row(data_dir, job_id)
    assert row["status"] == "failed" and row["error"] == "time limit of 1 s exceeded", row
    assert row["model_id"] is None and model_folders(data_dir) == set()


@pytest.mark.api
def test_start_sweeps_model_and_source_folders_no_row_owns(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    # What a worker killed between publishing and committing leaves, long ago and just now.
    old = [data_dir / "models" / ("a" * 32), data_dir / "sources" / ("b" * 32)]
    recent = data_dir / "models" / ("c" * 32)
    for folder in [*old, recent]:
        folder.mkdir(parents=True)
        (folder / "weights.safetensors").write_bytes(b"weights")
    an_hour_ago = time.time() - 3600
    for folder in old:
        os.utime(folder, (an_hour_ago, an_hour_ago))

    client = make_client()

    assert not any(folder.exists() for folder in old)
    assert recent.exists()  # may be a live worker's, about to commit
    sources = client.get("/v1/sources", params={"page_size": 200}).json()["items"]
    assert sources and all((data_dir / "sources" / s["id"]).is_dir() for s in sources)


@pytest.mark.unit
def test_a_stopped_workers_heartbeat_stays_gone(tmp_path: Path) -> None:
    from app.db import make_engine, migrate, session_factory
    from app.jobs.estimates import alive_workers
    from app.jobs.worker import Heartbeat

    engine = make_engine(f"sqlite:///{tmp_path / 'p2l.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    beat = Heartbeat(sessions, "w1", "standalone", torch.device("cpu"))
    with beat, sessions() as session:
        assert [w.id for w in alive_workers(session)] == ["w1"]
    # A beat that comes after the stop (its thread was mid-way) must not bring the row back.
    beat.beat()
    beat.running(None)
    with sessions() as session:
        assert alive_workers(session) == []
    engine.dispose()


@pytest.mark.api
def test_a_requeued_job_shows_no_error_while_it_waits_or_runs_again(
    make_client: Callable[..., TestClient],
) -> None:
    # Issue #23 (7): a re-queued job kept its previous run's end as its error while it
    # waited, and while it ran again; the reason belongs in its progress label.
    from app.jobs.service import claim_next_job, reap_expired_leases, release_worker_jobs
    from app.jobs.service import submit_job as submit
    from app.models import Job

    state = make_client(import_bundled_zoo=False).app.state.service
    with state.sessions() as session:
        job_id = submit(session, "finetune", {}).id
        session.commit()
        claim_next_job(session, "worker-a", 60)
        job = session.get(Job, job_id)

        # Lease lost: reaped, re-queued (the run counted).
        job.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
        assert reap_expired_leases(session, max_attempts=3) == (1, 0)
        session.refresh(job)
        assert (job.status, job.error) == ("queued", None), job.error
        assert "re-queued after attempt 1 of 3" in job.progress["label"]

        # Claimed again: still no error (the current attempt has none).
        assert claim_next_job(session, "worker-b", 60) is not None
        session.refresh(job)
        assert (job.status, job.error, job.attempts) == ("running", None, 2), job.error

        # Handed back by a stopped worker: queued, no error, the run not counted.
        assert release_worker_jobs(session, "worker-b", "stopped", 3, handed_back=True) == (1, 0)
        session.refresh(job)
        assert (job.status, job.error, job.attempts) == ("queued", None, 1), job.error
        assert job.progress["label"] == waiting_because(HANDED_BACK + "stopped")

        # A row re-queued by an older release still carries the text: a claim clears it.
        job.error = "re-queued after attempt 1 of 3: its worker stopped renewing its lease"
        session.commit()
        assert claim_next_job(session, "worker-c", 60) is not None
        session.refresh(job)
        assert (job.status, job.error) == ("running", None), job.error


@pytest.mark.api
def test_the_first_reap_after_an_outage_extends_expired_leases(tmp_path: Path) -> None:
    from app.db import make_engine, migrate, session_factory
    from app.jobs.service import LeaseReaper, claim_next_job, submit_job
    from app.models import Job

    # A database of its own: no service's supervisor reaps behind the test's back.
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    reaper = LeaseReaper(lease_seconds=3, max_attempts=2)
    with session_factory(engine)() as session:
        job_id = submit_job(session, "finetune", {}).id
        claim_next_job(session, "worker-a", 60)
        job = session.get(Job, job_id)
        assert reaper.reap(session) == (0, 0)  # a live lease stays
        job.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
        # Reaps failed for more than a third of a lease (an outage): the lease that expired
        # meanwhile is extended, not reaped; its worker may renew it.
        reaper.unreachable()
        time.sleep(1.1)
        assert reaper.reap(session) == (0, 0)
        session.refresh(job)
        assert job.status == "running" and job.worker_id == "worker-a"
        assert job.lease_expires_at.replace(tzinfo=UTC) > datetime.now(UTC) + timedelta(seconds=2)
        # After a failure too brief to matter, an expired lease is reaped as ever.
        job.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
        reaper.unreachable()
        assert reaper.reap(session) == (1, 0)
    engine.dispose()
