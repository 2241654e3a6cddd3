"""Cost before commitment: estimates from measured throughput, dry runs, no-worker warnings."""

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import make_engine, migrate, session_factory
from app.finetune.options import FinetuneOptions
from app.jobs.estimates import estimate_finetune, forward_flops, record_epoch, record_job
from app.jobs.progress import Meter, ProgressWriter
from app.models import Ranking, Throughput
from tests.helpers import (
    lease_env,
    upload_garments,
    wait_for_job,
)
from tests.servers import spawn

NO_WORKER = "no worker is alive to run this job: "


def counts(client: TestClient) -> tuple[int, int]:
    """(jobs, rankings) the service holds."""
    jobs = client.get("/v1/jobs").json()["items"]
    with client.app.state.service.sessions() as session:  # no route lists rankings
        rankings = session.scalar(select(func.count()).select_from(Ranking))
    return len(jobs), rankings


@pytest.mark.system
def test_estimates_are_measured_once_a_job_ran_and_dry_runs_store_nothing(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(start_worker=True)
    target = upload_garments(client, per_class=20)
    body = {"target_dataset_id": target, "source_id": "best", "schedule": "manual", "epochs": 3,
            "patience": None}  # fmt: skip

    dry = client.post("/v1/finetunes?dry_run=true", json=body, headers={"Idempotency-Key": "k1"})
    assert dry.status_code == 200, dry.text
    prior = dry.json()
    assert prior["basis"] == "prior" and any("rough prior" in w for w in prior["warnings"])
    assert prior["architecture"] == "compact_cnn" and prior["input_size"] == 32
    # 20 per class: 4 test, 3 validation, 13 training images each, 5 classes.
    assert (prior["train_images"], prior["val_images"], prior["test_images"]) == (65, 15, 20)
    assert prior["epochs_planned"] == 3 and prior["seconds"] > 0
    assert counts(client) == (0, 0), "a dry run stores no job and no ranking"
    # The same checks: a bad request is refused alike.
    bad = client.post("/v1/finetunes?dry_run=true", json={**body, "freeze_below": 99})
    assert bad.status_code == 422 and "layer groups" in bad.json()["detail"]
    auto = {**body, "schedule": "auto", "auto_epochs": 2, "baseline": True}
    del auto["patience"]
    planned = client.post("/v1/finetunes?dry_run=true", json=auto).json()["epochs_planned"]
    assert planned == 4 * 2 + 3 + 3

    # The dry run kept no Idempotency-Key record: the real request with the key runs.
    submitted = client.post("/v1/finetunes", json=body, headers={"Idempotency-Key": "k1"})
    assert submitted.status_code == 202 and "idempotent-replayed" not in submitted.headers
    job = submitted.json()
    assert job["estimate"]["basis"] == "prior" and job["estimate"]["epochs_planned"] == 3
    assert any("rough prior" in w for w in job["warnings"])
    assert not any(w.startswith(NO_WORKER) for w in job["warnings"])  # its runner is up
    assert counts(client) == (1, 1)
    done = wait_for_job(client, job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["estimate"] == job["estimate"]  # kept with the job

    measured = client.post("/v1/finetunes?dry_run=true", json=body).json()
    assert measured["basis"] == "measured" and measured["device"] == "cpu"
    assert measured["workers_alive"] >= 1
    assert not any("rough prior" in w for w in measured["warnings"])
    assert measured["images_per_second"] > 0
    # Measured on the same job: close to what it took (a busy machine leaves slack).
    actual = done["progress"]["elapsed_seconds"]
    assert actual / 3 < measured["seconds"] < actual * 3, (measured, actual)
    assert counts(client) == (1, 1)
    metrics = client.get("/metrics").text
    assert "p2l_workers_alive 1" in metrics and "p2l_job_worker_running 1" in metrics


@pytest.mark.system
def test_without_a_worker_the_job_is_accepted_with_a_warning_and_stays_queued(
    make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path, processes: list
) -> None:
    client = make_client()  # P2L_START_WORKER=false, as the fixture sets it
    target = upload_garments(client, per_class=10)
    body = {"target_dataset_id": target, "source_id": "best", "schedule": "manual", "epochs": 1}
    response = client.post("/v1/finetunes", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    warning = next(w for w in job["warnings"] if w.startswith(NO_WORKER))
    assert "python -m app.worker" in warning and "P2L_START_WORKER" in warning
    dry = client.post("/v1/finetunes?dry_run=true", json=body).json()
    assert any(w.startswith(NO_WORKER) for w in dry["warnings"]) and dry["workers_alive"] == 0
    time.sleep(1.5)
    queued = client.get(f"/v1/jobs/{job['id']}").json()
    assert queued["status"] == "queued" and queued["progress"]["phase"] == "queued"
    assert any(w.startswith(NO_WORKER) for w in queued["warnings"])
    assert "p2l_workers_alive 0" in client.get("/metrics").text

    # Do what the warning says: a standalone worker registers, runs the job, and the
    # warning is gone.
    worker = spawn(["-m", "app.worker"], lease_env(data_dir), tmp_path / "worker.log")
    processes.append(worker)
    done = wait_for_job(client, job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert not any(w.startswith(NO_WORKER) for w in done["warnings"])
    again = client.post("/v1/finetunes?dry_run=true", json=body).json()
    assert again["workers_alive"] == 1 and again["basis"] == "measured"
    assert not any(w.startswith(NO_WORKER) for w in again["warnings"])
    assert "p2l_workers_alive 1" in client.get("/metrics").text
    worker.send_signal(signal.SIGTERM)  # a clean stop removes its heartbeat row
    worker.wait(30)
    assert "p2l_workers_alive 0" in client.get("/metrics").text


@pytest.mark.unit
def test_another_architectures_measurement_is_scaled_by_compute(session: Session) -> None:
    options = FinetuneOptions(schedule="manual", epochs=2)
    classes = {"a": 30, "b": 30}
    assert estimate_finetune(session, "compact_cnn_wide", 64, classes, options).basis == "prior"
    record_epoch(session, "w1", "compact_cnn", 32, "cpu", 100, 20, seconds=1.2, train_seconds=1.0)
    record_job(session, "w1", "compact_cnn", 32, "cpu", images=200, overhead_seconds=2.0)
    session.commit()

    own = estimate_finetune(session, "compact_cnn", 32, classes, options)
    assert own.basis == "measured" and own.images_per_second == 100
    # Per class 6 test, 5 validation, 19 training images: two epochs of 38 images trained
    # and 10 validated at 100 images/s each, and 60 images of overhead at 0.01 s each.
    assert (own.train_images, own.val_images, own.test_images) == (38, 10, 12)
    assert own.seconds == pytest.approx(2 * (38 / 100 + 10 / 100) + 0.6, abs=0.05)

    wide = estimate_finetune(session, "compact_cnn_wide", 64, classes, options)
    ratio = forward_flops("compact_cnn", 32) / forward_flops("compact_cnn_wide", 64)
    assert wide.basis == "scaled" and ratio < 0.5
    assert wide.images_per_second == pytest.approx(100 * ratio, abs=0.1)
    assert "compact_cnn at 32 px" in wide.warnings[0]
    assert wide.seconds > own.seconds


@pytest.mark.unit
def test_flops_are_counted_where_a_feature_map_shrinks_to_one_pixel() -> None:
    """resnet18 at 32 px ends in a 1x1 map, where batch norm in training mode refuses one
    image: the estimate fell back to its prior, with a logged traceback."""
    # Convolutions dominate: 49 times fewer pixels, about 49 times fewer FLOPs.
    assert forward_flops("resnet18", 32) == pytest.approx(
        forward_flops("resnet18", 224) / 49, rel=1e-3
    )


@pytest.mark.unit
def test_unknown_compute_falls_back_to_a_prior_with_a_warning(session: Session) -> None:
    # Counting FLOPs fails for an architecture the registry cannot build: still an estimate.
    options = FinetuneOptions(schedule="manual", epochs=2)
    guess = estimate_finetune(session, "no_such_architecture", 32, {"a": 30, "b": 30}, options)
    assert guess.basis == "prior" and guess.flops_per_image is None and guess.seconds > 0
    assert any("could not be counted" in w for w in guess.warnings)


@pytest.mark.api
def test_workers_measuring_the_same_key_at_once_both_count(
    tmp_path: Path, database_url: str | None
) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'p2l.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with sessions() as other:
                record_epoch(other, "w2", "compact_cnn", 32, "cpu", 200, 20, 2.5, 2.0)
                other.commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        # Both see no row yet: the first one's insert is not committed when the second
        # writes (the second waits for it, then averages into it).
        with sessions() as first:
            record_epoch(first, "w1", "compact_cnn", 32, "cpu", 100, 20, 1.5, 1.0)
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.3)
            first.commit()
        thread.join(30)
        assert not errors, errors
        with sessions() as session:
            row = session.get(Throughput, ("compact_cnn", 32, "cpu"))
            assert row is not None and row.epochs_measured == 2 and row.worker_id == "w2"
            assert row.train_images_per_second == pytest.approx(0.7 * 100 + 0.3 * 100)
            assert row.eval_images_per_second == pytest.approx(0.7 * 40 + 0.3 * 40)
            record_job(session, "w1", "compact_cnn", 32, "cpu", images=100, overhead_seconds=1)
            record_job(session, "w1", "compact_cnn", 32, "cpu", images=100, overhead_seconds=2)
            session.commit()
            session.refresh(row)
            assert row.jobs_measured == 2
            assert row.overhead_seconds_per_image == pytest.approx(0.7 * 0.01 + 0.3 * 0.02)
    finally:
        engine.dispose()


@dataclass
class HeldFor:
    job_id: str
    worker_id: str
    lost: threading.Event = field(default_factory=threading.Event)


@pytest.mark.unit
def test_head_only_auto_candidate_epochs_are_not_measured(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p2l.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    meter = Meter("w1", "compact_cnn", 32, "cpu", train_images=100, val_images=20)
    writer = ProgressWriter(sessions, HeldFor("0" * 32, "w1"), [("auto_search", 1)] * 4, meter)
    metrics = {"epoch": 1, "train_loss": 1.0, "seconds": 1.5, "train_seconds": 1.0}
    frozen = {"decay": 1.0, "freeze_below": -1}
    for index, candidate in enumerate(({"decay": 1.0}, frozen, frozen), start=1):
        writer.update({"phase": "auto_search", "label": "auto", "candidate": candidate,
                       "candidate_index": index, "candidates": 4, "epoch": 1, "epochs": 1,
                       "metrics": {**metrics, "train_seconds": 1.0 / index}})  # fmt: skip
    with sessions() as session:
        row = session.get(Throughput, ("compact_cnn", 32, "cpu"))
        assert row is not None and row.epochs_measured == 1
        assert row.train_images_per_second == pytest.approx(100)
    engine.dispose()
