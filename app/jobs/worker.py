"""The job worker: a separate process that takes queued jobs from the database and runs them.

Started by the service (app.jobs.runner), or on its own with ``python -m app.jobs.worker``
(same P2L_ settings) to run jobs on another process or machine sharing the database and
data dir; on a Ray cluster, each task runs one job through ``run_next_job``. A worker
holds each job through a lease it renews (see app.jobs.service); it stops a job whose
lease it lost, and publishes nothing for it. Stopped on purpose (SIGTERM,
SIGINT), it hands its job back without using up one of the job's attempts.
"""

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

import torch
from safetensors.torch import save_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.datasets.service import DatasetArrays, dataset_arrays, dataset_exists, get_dataset
from app.db import make_engine, session_factory
from app.families import get_spec, load_model, weights_to_save
from app.finetune.options import FinetuneOptions
from app.finetune.pipeline import finetune
from app.finetune.race import race_cost
from app.finetune.train import Accelerator, Cancelled
from app.jobs.estimates import (
    HEARTBEAT_SECONDS,
    device_type,
    forget_worker,
    heartbeat,
    phase_plan,
    split_totals,
)
from app.jobs.evaluations import run_evaluation
from app.jobs.finetunes import MODEL_WEIGHTS
from app.jobs.progress import Meter, ProgressWriter
from app.jobs.race import race_shortlist
from app.jobs.service import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    claim_next_job,
    finish_job,
    make_worker_id,
    reap_expired_leases,
    release_worker_jobs,
    renew_lease,
)
from app.memory import limit_arenas, trim
from app.models import Evidence, FinetunedModel, Job
from app.p2l.reference import resolve_device
from app.store import ArtifactStore, make_store
from app.unit_of_work import unit_of_work
from app.zoo.calibration import evidence_of, refit_if_due
from app.zoo.sources import get_source, weights_path

logger = logging.getLogger("p2l.worker")

POLL_SECONDS = 0.5


class StopRequested(SystemExit):
    """The worker was asked to stop (SIGTERM or SIGINT): it hands its job back."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


class Lease:
    """This worker's hold on one job, kept by a thread while the job runs.

    The thread renews the lease every third of its length, fails the job once it exceeds
    the time limit, and, in a worker started by the service, gives the job back and exits
    the process as soon as that service is gone. ``lost`` is set once the job is no
    longer this worker's to run.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        job_id: str,
        worker_id: str,
        parent_pid: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.job_id = job_id
        self.worker_id = worker_id
        self.parent_pid = parent_pid
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="p2l-lease", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        """Renew, watch the time limit and the parent, until the job ends or is lost."""
        lease = self.settings.job_lease_seconds
        limit = self.settings.job_time_limit_seconds
        started = last_renewal = time.monotonic()
        # Checking the parent is free, renewing is a write: tick often, renew at lease/3.
        while not self._done.wait(min(1.0, lease / 3)):
            try:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    self._release_and_exit()
                now = time.monotonic()
                if now - started > limit:
                    self._fail(f"time limit of {limit:g} s exceeded")
                    return
                if now - last_renewal >= lease / 3:
                    with self.sessions() as session:
                        if not renew_lease(session, self.job_id, self.worker_id, lease):
                            logger.warning("job %s: lease lost; stopping it", self.job_id)
                            self.lost.set()
                            return
                    last_renewal = now
            except Exception:  # a database hiccup: the lease has slack, try again next tick
                logger.exception("job %s: could not renew the lease", self.job_id)

    def _fail(self, reason: str) -> None:
        """End the job as failed now, whatever the training is doing, and stop it."""
        with self.sessions() as session:
            finish_job(session, self.job_id, self.worker_id, FAILED, error=reason)
            session.commit()
        logger.error("job %s: %s", self.job_id, reason)
        self.lost.set()

    def _release_and_exit(self) -> None:
        """The service that started this worker is gone: give the job back, exit at once."""
        try:
            with self.sessions() as session:
                release_worker_jobs(
                    session,
                    self.worker_id,
                    "the service that started its worker stopped",
                    self.settings.job_max_attempts,
                )
            logger.warning("job %s: parent process gone; job released, exiting", self.job_id)
        finally:  # even without a database: the lease then expires and is reaped
            os._exit(1)


def run_finetune(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    device: torch.device,
    job: Job,
    lease: Lease,
) -> None:
    """Fine-tune the job's source on its target and publish the model (all or nothing)."""
    params = job.params
    options = FinetuneOptions.from_record(params["options"])
    race = params.get("race")
    with sessions() as session:
        dataset = get_dataset(session, params["target_dataset_id"])
        source = get_source(
            session, race["contestants"][0]["source_id"] if race else params["source_id"]
        )
    train_images, val_images, _ = split_totals(dataset.class_counts, options)
    meter = Meter(
        lease.worker_id, source.architecture, source.input_size, device_type(device),
        train_images, val_images,
    )  # fmt: skip
    estimate = params.get("estimate") or {}
    plan = phase_plan(options, race["trial_epochs"] if race else ())
    progress = ProgressWriter(sessions, lease, plan, meter, estimate.get("seconds"))
    settings = lease.settings
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        channels_last=settings.channels_last,
        pin_memory=settings.pin_memory,
    )

    @functools.cache
    def arrays(size: int) -> DatasetArrays:
        return dataset_arrays(
            store, dataset, size, settings.pixel_cache_max_bytes,
            processes=None if settings.decode_processes else False,
            dataset_exists=lambda: _dataset_exists(sessions, dataset.id),
        )  # fmt: skip

    race_record = None
    try:
        if race:
            progress.set_phase("loading", f"loading {dataset.num_images} images for the race")
            race_record = race_shortlist(
                sessions, store, device, options, race, arrays, progress, accelerator
            )
            with sessions() as session:
                source = get_source(session, race_record["winner"])
            arrays.cache_clear()  # only the winner's input size is needed from here on
            progress.meter = replace(
                meter, architecture=source.architecture, input_size=source.input_size
            )
        progress.set_phase(
            "loading", f"loading {dataset.num_images} images and the source {source.name}"
        )
        target = arrays(source.input_size)
        model = load_model(source.architecture, source.num_classes, weights_path(store, source))
        spec = get_spec(source.architecture)
        model, report = finetune(
            model,
            source.architecture,
            target.images,
            target.labels,
            target.class_names,
            spec.mean,
            spec.std,
            options,
            device=device,
            progress=progress.update,
            should_stop=progress.should_stop,
            image_names=target.image_names,
            accelerator=accelerator,
        )
        progress.set_phase("saving", "saving the model")
    finally:
        progress.close()
        arrays.cache_clear()

    model_id = os.urandom(16).hex()
    key = f"models/{model_id}"
    result = {"model_id": model_id, **report.__dict__}
    if race_record is not None:
        finetune_epochs = sum(e for phase, e in plan if phase in ("auto_search", "fine_tune"))
        race_record["cost"] = {
            **race_cost(race_record["epochs"], finetune_epochs, len(race_record["contestants"])),
            "race_seconds": race_record.pop("seconds"),
            "finetune_seconds": round(report.seconds, 3),
        }
        result["race"] = race_record
    try:  # what the fine-tune showed, for the ranking's calibration: never worth the model
        evidence = evidence_of(store, job.id, dataset, source, result)
    except Exception:
        evidence = None
        logger.exception("job %s: no calibration evidence recorded", job.id)
    with sessions() as session, unit_of_work(session, store) as work:
        staging = work.stage()
        save_file(weights_to_save(model), staging / MODEL_WEIGHTS)
        work.publish(staging, key)
        session.add(
            FinetunedModel(
                id=model_id,
                job_id=job.id,
                source_id=source.id,
                target_dataset_id=dataset.id,
                architecture=source.architecture,
                input_size=source.input_size,
                class_names=target.class_names,
                report=result,
                artifact_key=key,
            )
        )
        if evidence is not None:
            session.add(evidence)
        # The commit checks the lease: a job reaped meanwhile (and perhaps running on
        # another worker) gets nothing from this one.
        if not finish_job(
            session, job.id, lease.worker_id, SUCCEEDED,
            result=result, model_id=model_id, error=None,
        ):  # fmt: skip
            logger.warning("job %s: lease lost before the commit; model discarded", job.id)
            work.abandon()
    if race_record is None:  # a race's loads and trial evaluations are not this speed's
        progress.record_job(len(target.labels))


def _dataset_exists(sessions: sessionmaker[Session], dataset_id: str) -> bool:
    with sessions() as session:
        return dataset_exists(session, dataset_id)


class Heartbeat:
    """A worker's row in ``workers``, renewed every few seconds (idle or busy) by a thread.

    ``job_id`` is the job it runs now; the row is deleted when the worker stops cleanly.
    """

    def __init__(
        self, sessions: sessionmaker[Session], worker_id: str, kind: str, device: torch.device
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.kind = kind
        self.device = device_type(device)
        self.job_id: str | None = None
        self.jobs_run = 0
        self._done = threading.Event()
        # Beats and the final delete take turns: a beat in flight at the stop would put the
        # row back, and the stopped worker would count as alive for WORKER_FRESH_SECONDS.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="p2l-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:  # waits for a beat in flight; no beat writes after this
            self._done.set()
            try:
                with self.sessions() as session:
                    forget_worker(session, self.worker_id)
            except Exception:  # its row goes stale and stops counting as alive
                logger.exception("worker %s: could not remove its heartbeat row", self.worker_id)
        self._thread.join(5)

    def running(self, job_id: str | None) -> None:
        """Note the job the worker runs now (None once it ended) and report at once."""
        if job_id is None and self.job_id is not None:
            self.jobs_run += 1
        self.job_id = job_id
        self.beat()

    def beat(self) -> None:
        """Renew the row now (a failure is logged: the next beat tries again); nothing once
        the worker is stopping."""
        with self._lock:
            if self._done.is_set():
                return
            try:
                with self.sessions() as session:
                    heartbeat(
                        session, self.worker_id, self.kind, self.device, self.job_id, self.jobs_run
                    )
            except Exception:
                logger.exception("worker %s: heartbeat failed", self.worker_id)

    def _beat(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            self.beat()


JobBody = Callable[[sessionmaker[Session], ArtifactStore, torch.device, Job, Lease], None]

# What a worker runs for each job kind.
JOB_KINDS: dict[str, JobBody] = {"finetune": run_finetune, "evaluate": run_evaluation}


def run_job(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    device: torch.device,
    job: Job,
    lease: Lease,
) -> None:
    """Run one claimed job and record how it ended (only while this worker holds it)."""
    try:
        runner = JOB_KINDS.get(job.kind)
        if runner is None:
            raise ValueError(f"unknown job kind {job.kind!r}")
        runner(sessions, store, device, job, lease)
    except Cancelled as exc:
        with sessions() as session:
            if not finish_job(
                session, job.id, lease.worker_id, CANCELLED, error=f"cancelled: {exc}"
            ):
                logger.warning("job %s stopped: this worker no longer holds it", job.id)
            session.commit()
    except Exception as exc:
        logger.exception("job %s failed", job.id)
        with sessions() as session:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            finish_job(session, job.id, lease.worker_id, FAILED, error=error)
            session.commit()


def run_claimed_job(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    device: torch.device,
    settings: Settings,
    job: Job,
    worker_id: str,
    parent_pid: int | None = None,
    beat: "Heartbeat | None" = None,
) -> None:
    """Run a job this worker just claimed, holding its lease (renewed) until it ends."""
    logger.info("running job %s (attempt %d)", job.id, job.attempts)
    if beat is not None:
        beat.running(job.id)
    try:
        with Lease(sessions, settings, job.id, worker_id, parent_pid) as lease:
            run_job(sessions, store, device, job, lease)
        if job.kind == "finetune":  # outside the lease: the job has ended
            refit_after(sessions, store, settings, job.id)
    finally:
        if beat is not None:
            beat.running(None)
        trim()  # the job's freed buffers go back to the OS, not kept until the next job


def refit_after(
    sessions: sessionmaker[Session], store: ArtifactStore, settings: Settings, job_id: str
) -> None:
    """The automatic calibration refit after a fine-tune that left evidence, when due (a
    refit is advice: a failure is logged, never the job's)."""
    try:
        with sessions() as session:
            reference = session.scalar(
                select(Evidence.reference_sha256).where(Evidence.job_id == job_id)
            )
            if reference is not None:
                refit_if_due(session, store, settings, reference)
    except Exception:
        logger.exception("job %s: the automatic calibration refit failed", job_id)


def run_next_job(settings: Settings, worker_id: str) -> str | None:
    """Claim the oldest queued job and run it like the worker loop does; its id, or None.

    The body of a Ray task (app.jobs.ray_runner): a process with no parent to watch, one
    job per call. Whatever ends the call early hands nothing back: the job's lease then
    expires and the reaper re-queues or fails it, counting the attempt.
    """
    logger.setLevel(logging.INFO)  # Ray's worker already has handlers (and prints them)
    engine = make_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    device = resolve_device(settings.device)
    try:
        with Heartbeat(sessions, worker_id, "ray", device) as beat:
            job = _next_job(sessions, settings, worker_id)
            if job is None:  # another worker took it first
                return None
            store = make_store(settings)
            run_claimed_job(sessions, store, device, settings, job, worker_id, beat=beat)
            return job.id
    finally:
        engine.dispose()


def run_worker(
    settings: Settings, parent_pid: int | None = None, id_suffix: str | None = None
) -> None:
    """Run queued jobs one at a time until stopped, or until the parent process is gone.

    ``id_suffix`` lets the service that starts this worker know its id (host-pid-suffix).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    worker_id = make_worker_id(os.getpid(), id_suffix)
    limit_arenas(settings.malloc_arena_max)  # a standalone worker inherits no MALLOC_ARENA_MAX
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    engine = make_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    store = make_store(settings)
    device = resolve_device(settings.device)
    logger.info("worker %s ready on %s", worker_id, device)
    stop: StopRequested | None = None
    # Its heartbeat tells the API (and estimates) that a worker is alive, idle or busy.
    beat = Heartbeat(sessions, worker_id, "local" if parent_pid else "standalone", device)
    try:
        with beat:
            while parent_pid is None or os.getppid() == parent_pid:
                job = _next_job(sessions, settings, worker_id)
                if job is None:
                    time.sleep(POLL_SECONDS)
                    continue
                run_claimed_job(sessions, store, device, settings, job, worker_id, parent_pid, beat)
    except StopRequested as exc:
        stop = exc
        raise
    finally:  # give a job held now back at once rather than at lease expiry
        with sessions() as session:
            if stop is not None:  # stopped on purpose: the run does not count
                reason = f"its worker was stopped ({stop.signal_name})"
                release_worker_jobs(
                    session, worker_id, reason, settings.job_max_attempts, handed_back=True
                )
            else:  # it crashed, or its parent is gone: the run counts
                release_worker_jobs(
                    session, worker_id, "its worker exited", settings.job_max_attempts
                )
        engine.dispose()


def _next_job(sessions: sessionmaker[Session], settings: Settings, worker_id: str) -> Job | None:
    """Reap expired leases (any worker's), then claim the oldest queued job."""
    try:
        with sessions() as session:
            requeued, ended = reap_expired_leases(session, settings.job_max_attempts)
            if requeued or ended:
                logger.warning("reaped expired leases: %d re-queued, %d ended", requeued, ended)
            return claim_next_job(session, worker_id, settings.job_lease_seconds)
    except Exception:  # the database is briefly unreachable: poll again later
        logger.exception("could not poll for jobs")
        return None


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    # Once only: a second signal must not cut the hand-back short (the lease would then
    # expire and the run count after all). The exception unwinds the main thread through
    # run_worker, which hands the job back.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise StopRequested(signum)


if __name__ == "__main__":
    run_worker(Settings())
