"""A fine-tune whose database connections are dropped while it trains (issue #23, 5): a real
worker process on a real PostgreSQL, its connections terminated from a separate one, or
the whole server stopped for a while."""

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.helpers import (
    ENDED,
    HANDED_BACK,
    JOB_TIMEOUT,
    LEASE,
    eventually,
    get_job,
    lease_env,
    start_finetune,
    upload_garments,
    wait_for_job,
)
from tests.servers import Postgres, spawn

pytestmark = pytest.mark.system

TERMINATE_OTHERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_a_finetune_survives_its_database_connections_being_dropped(
    make_client: Callable[..., TestClient],
    postgres_database: str,
    data_dir: Path,
    tmp_path: Path,
    processes: list,
) -> None:
    client = make_client(database_url=postgres_database, job_lease_seconds=LEASE)
    target = upload_garments(client, per_class=6)
    log = tmp_path / "worker.log"
    worker = spawn(["-m", "app.worker"], lease_env(data_dir, database_url=postgres_database), log)
    processes.append(worker)
    job_id = start_finetune(client, target, epochs=80)  # seconds: each epoch takes ~30 ms+
    # The test's own reads and kills: a connection per statement, nothing the kills touch.
    admin = create_engine(postgres_database, poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def job() -> dict:
        with admin.connect() as connection:
            query = text("SELECT status, attempts, error, progress FROM jobs WHERE id = :id")
            return dict(connection.execute(query, {"id": job_id}).mappings().one())

    def training() -> dict | None:
        row = job()
        return row if row["status"] == "running" and row["progress"].get("epoch") else None

    try:
        eventually(training, JOB_TIMEOUT, "the job trains")
        killed = rounds = 0
        answers: list[tuple[int, str | None]] = []
        for _ in range(5):  # the worker's stop checks, progress writes and lease renewals
            if job()["status"] != "running":
                break
            with admin.connect() as connection:
                killed += len(connection.execute(text(TERMINATE_OTHERS)).all())
            rounds += 1
            # The API's pooled connections were dropped too: its users get an answer.
            for path in (f"/v1/jobs/{job_id}", "/v1/datasets", f"/v1/jobs/{job_id}/events"):
                answer = client.head(path) if path.endswith("events") else client.get(path)
                answers.append((answer.status_code, answer.headers.get("retry-after")))
            time.sleep(0.15)
        ended = eventually(lambda: (r := job())["status"] in ENDED and r, JOB_TIMEOUT, "it ends")
    finally:
        admin.dispose()
    log_text = log.read_text(errors="replace")
    assert ended["status"] == "succeeded", (ended["error"], log_text[-3000:])
    assert ended["error"] is None
    assert rounds == 5 and killed >= 5, (rounds, killed)  # all while it trained
    # 200, or 503 with Retry-After; never a 500 (nor a 401: keys do not depend on it).
    assert all(s == 200 or (s == 503 and retry) for s, retry in answers), answers
    assert "reconnected" in log_text, log_text[-3000:]  # the drops reached the worker
    # The run was not counted twice: it trained on through the drops, or was handed back.
    assert ended["attempts"] == 1 or HANDED_BACK in log_text, (ended, log_text[-3000:])
    # The API, whose pooled connections were dropped too, answers with the job.
    answer = client.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text


def test_a_finetune_whose_database_stays_away_is_handed_back_then_runs_again(
    make_client: Callable[..., TestClient],
    own_postgres: Postgres,
    data_dir: Path,
    tmp_path: Path,
    processes: list,
) -> None:
    # A lease longer than the outage: no reaper counts the run meanwhile.
    limits = {"database_url": own_postgres.url, "job_lease_seconds": 60}
    client = make_client(**limits)
    target = upload_garments(client, per_class=6)
    log = tmp_path / "worker.log"
    worker_env = lease_env(data_dir, db_retry_seconds=1, **limits)
    processes.append(spawn(["-m", "app.worker"], worker_env, log))
    job_id = start_finetune(client, target, epochs=100)
    eventually(lambda: get_job(client, job_id)["progress"].get("epoch"), JOB_TIMEOUT, "it trains")

    own_postgres.stop()
    # It trains on for db_retry_seconds (or retries its final commit as long), then waits
    # to hand the job back (it used to fail it).
    gave_up = ("handing it back", f"job {job_id} failed")
    eventually(
        lambda: any(words in log.read_text(errors="replace") for words in gave_up),
        60,
        "the worker gives up on the database",
    )
    own_postgres.start()

    ended = wait_for_job(client, job_id)
    log_text = log.read_text(errors="replace")
    assert ended["status"] == "succeeded", (ended["error"], log_text[-3000:])
    assert ended["error"] is None
    assert f"job {job_id} handed back, not counted as an attempt" in log_text, log_text[-3000:]
    assert log_text.count(f"running job {job_id}") == 2
    assert ended["attempts"] == 1  # the handed-back run did not count


def test_a_database_away_longer_than_a_lease_costs_the_job_no_attempt(
    make_client: Callable[..., TestClient],
    own_postgres: Postgres,
    data_dir: Path,
    tmp_path: Path,
    processes: list,
) -> None:
    # No worker could renew its lease while the database was away: the reapers (the API's
    # supervisor here, every second) extend the leases that expired meanwhile, not reap them.
    lease = 4.0
    limits = {"database_url": own_postgres.url, "job_lease_seconds": lease}
    client = make_client(**limits)
    target = upload_garments(client, per_class=6)
    log = tmp_path / "worker.log"
    worker = spawn(["-m", "app.worker"], lease_env(data_dir, **limits), log)
    processes.append(worker)
    job_id = start_finetune(client, target, epochs=400)
    eventually(lambda: get_job(client, job_id)["progress"].get("epoch"), JOB_TIMEOUT, "it trains")

    own_postgres.stop()
    time.sleep(lease + 2)  # its lease expires meanwhile
    # The worker is slower to reconnect than the API's reaper (backoff, a busy host): it is
    # paused until well after the database is back.
    worker.send_signal(signal.SIGSTOP)
    try:
        own_postgres.start()
        time.sleep(2.5)
    finally:
        worker.send_signal(signal.SIGCONT)

    ended = wait_for_job(client, job_id)
    log_text = log.read_text(errors="replace")
    assert ended["status"] == "succeeded", (ended["error"], log_text[-3000:])
    assert ended["attempts"] == 1, log_text[-3000:]
    assert log_text.count(f"running job {job_id}") == 1  # trained on through it, never re-run
