"""The job worker: a separate process that takes queued jobs from the database and runs them.

Started by the service (app.jobs.runner), or on its own with ``python -m app.jobs.worker``
(same P2L_ settings) to run jobs on another process or machine sharing the database and
data dir.
"""

import logging
import os
import time
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from sqlalchemy import Connection, Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.architectures import get_spec, load_model, weights_to_save
from app.config import Settings
from app.datasets.loading import load_all_pixels
from app.datasets.service import dataset_files, get_dataset
from app.db import make_engine, session_factory
from app.finetune.pipeline import FinetuneOptions, finetune
from app.finetune.train import Cancelled
from app.jobs.finetunes import MODEL_WEIGHTS
from app.jobs.service import CANCELLED, FAILED, RUNNING, SUCCEEDED, claim_next_job
from app.models import FinetunedModel, Job, utcnow
from app.p2l.reference import resolve_device
from app.store import LocalArtifactStore
from app.zoo.sources import get_source, weights_path

logger = logging.getLogger("p2l.worker")

POLL_SECONDS = 0.5


class JobProgress:
    """Throttled progress writes and the cancel flag, for one running job."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, planned_epochs: int) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.planned_epochs = planned_epochs
        self.epochs_done = 0
        self.started = time.monotonic()
        self.last_write = 0.0
        self.state: dict[str, Any] = {"history": []}
        self._connection: Connection | None = None
        self._cancel_query: Select[Any] | None = None

    def update(self, event: dict[str, Any]) -> None:
        """Fold in a step or epoch event; write at most twice a second (always per epoch)."""
        epoch_end = "metrics" in event
        if epoch_end:
            self.epochs_done += 1
            metrics = {"phase": event["phase"], **event.pop("metrics")}
            self.state["history"] = [*self.state["history"], metrics]
        self.state.update(event)
        elapsed = time.monotonic() - self.started
        self.state["elapsed_seconds"] = round(elapsed, 1)
        if self.epochs_done:
            remaining = max(self.planned_epochs - self.epochs_done, 0)
            self.state["eta_seconds"] = round(elapsed / self.epochs_done * remaining, 1)
        if epoch_end or time.monotonic() - self.last_write >= 0.5:
            self.write()

    def write(self) -> None:
        """Store the progress so far."""
        self.last_write = time.monotonic()
        with self.sessions() as session:
            session.execute(
                update(Job).where(Job.id == self.job_id).values(progress=dict(self.state))
            )
            session.commit()

    def should_stop(self) -> bool:
        """True once cancellation was requested (checked before every training step)."""
        if self._cancel_query is None:
            # One autocommit connection for the whole job: a check costs one small query.
            engine = self.sessions.kw["bind"]
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._cancel_query = select(Job.cancel_requested).where(Job.id == self.job_id)
        return bool(self._connection.execute(self._cancel_query).scalar())

    def close(self) -> None:
        """Release the connection of the cancel checks."""
        if self._connection is not None:
            self._connection.close()


def run_finetune(
    sessions: sessionmaker[Session], store: LocalArtifactStore, device: torch.device, job: Job
) -> None:
    """Fine-tune the job's source on its target and publish the model (all or nothing)."""
    params = job.params
    options = FinetuneOptions(**params["options"])
    with sessions() as session:
        dataset = get_dataset(session, params["target_dataset_id"])
        source = get_source(session, params["source_id"])
        files = dataset_files(store, dataset)
        source_file = weights_path(store, source)
    class_names = sorted(files)
    paths = [path for name in class_names for path in files[name]]
    labels = np.array([i for i, name in enumerate(class_names) for _ in files[name]])
    images = load_all_pixels(paths, source.input_size)

    model = load_model(source.architecture, source.num_classes, source_file)
    spec = get_spec(source.architecture)
    planned = options.epochs * (2 if options.baseline else 1)
    if options.schedule == "auto":
        planned += 4 * options.auto_epochs
    progress = JobProgress(sessions, job.id, planned)
    try:
        model, report = finetune(
            model,
            source.architecture,
            images,
            labels,
            class_names,
            spec.mean,
            spec.std,
            options,
            device=device,
            progress=progress.update,
            should_stop=progress.should_stop,
        )
        progress.write()
    finally:
        progress.close()

    model_id = os.urandom(16).hex()
    key = f"models/{model_id}"
    staging = store.new_staging_dir()
    save_file(weights_to_save(model), staging / MODEL_WEIGHTS)
    store.publish(staging, key)
    result = {"model_id": model_id, **report.__dict__}
    with sessions() as session:
        session.add(
            FinetunedModel(
                id=model_id,
                job_id=job.id,
                source_id=source.id,
                target_dataset_id=dataset.id,
                architecture=source.architecture,
                input_size=source.input_size,
                class_names=class_names,
                report=result,
                artifact_key=key,
            )
        )
        finished = _finish(session, job.id, SUCCEEDED, result=result, model_id=model_id)
        if finished:
            session.commit()
        else:  # the job was failed or cancelled meanwhile (e.g. a restart): keep nothing
            session.rollback()
            store.delete(key)


def _finish(session: Session, job_id: str, status: str, **values: Any) -> bool:
    """Move a job this worker runs to a terminal state; False if it is no longer ours."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == RUNNING, Job.worker_pid == os.getpid())
        .values(status=status, finished_at=utcnow(), **values)
    )
    return result.rowcount == 1


def run_job(
    sessions: sessionmaker[Session], store: LocalArtifactStore, device: torch.device, job: Job
) -> None:
    """Run one claimed job and record how it ended."""
    try:
        if job.kind != "finetune":
            raise ValueError(f"unknown job kind {job.kind!r}")
        run_finetune(sessions, store, device, job)
    except Cancelled as exc:
        with sessions() as session:
            _finish(session, job.id, CANCELLED, error=f"cancelled: {exc}")
            session.commit()
    except Exception as exc:
        logger.exception("job %s failed", job.id)
        with sessions() as session:
            _finish(session, job.id, FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
            session.commit()


def run_worker(settings: Settings, parent_pid: int | None = None) -> None:
    """Poll for queued jobs forever (until the parent process is gone)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    engine = make_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    store = LocalArtifactStore(settings.data_dir)
    device = resolve_device(settings.device)
    logger.info("worker %d ready on %s", os.getpid(), device)
    while parent_pid is None or os.getppid() == parent_pid:
        with sessions() as session:
            job = claim_next_job(session, os.getpid())
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        logger.info("running job %s", job.id)
        run_job(sessions, store, device, job)


if __name__ == "__main__":
    run_worker(Settings())
