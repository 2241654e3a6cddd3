"""The job worker: a separate process that takes queued jobs from the database and runs them.

Started by the service (app.jobs.runner), or on its own with ``python -m app.worker``
(same P2L_ settings) to run jobs on another process or machine sharing the database and
data dir; on a Ray cluster, each task runs one job through ``run_next_job``. What it can
run is the ``kinds`` it is given (``app.worker.JOB_KINDS``): this module knows none. A worker
holds each job through a lease it renews (see app.jobs.service); it stops a job whose
lease it lost, and publishes nothing for it. Stopped on purpose (SIGTERM,
SIGINT), it hands its job back without using up one of the job's attempts.
"""

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import is_transient, make_engine, retry_transient, session_factory, user_error_text
from app.finetune.train import Cancelled
from app.imaging.budget import configure_decode_budget
from app.jobs.estimates import HEARTBEAT_SECONDS, device_type, forget_worker, heartbeat
from app.jobs.kinds import JobKinds, JobRun
from app.jobs.service import (
    LeaseReaper,
    claim_next_job,
    finish_job,
    make_worker_id,
    release_jobs,
    release_worker_jobs,
    renew_lease,
)
from app.memory import limit_arenas, trim
from app.models import Job, JobStatus
from app.p2l.reference import resolve_device
from app.store import ArtifactStore, make_store

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
            except Exception as exc:  # a database hiccup: the lease has slack, retry next tick
                if is_transient(exc):  # the pool reconnects at the next try
                    logger.warning("job %s: could not renew the lease: %s", self.job_id, exc)
                else:
                    logger.exception("job %s: could not renew the lease", self.job_id)

    def _fail(self, reason: str) -> None:
        """End the job as failed now, whatever the training is doing, and stop it."""
        with self.sessions() as session:
            finish_job(session, self.job_id, self.worker_id, JobStatus.FAILED, error=reason)
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


def job_run(
    kinds: JobKinds,
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    device: torch.device,
    job: Job,
    lease: Lease,
) -> JobRun[Any]:
    """The claimed job as its kind's handler takes it (ValueError: unknown kind or params)."""
    kind = kinds.get(job.kind)
    if kind is None:
        raise ValueError(f"unknown job kind {job.kind!r}; this worker runs {sorted(kinds)}")
    return JobRun(job, kind.params_of(job), sessions, store, lease.settings, device, lease)


def run_job(
    kinds: JobKinds,
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    device: torch.device,
    job: Job,
    lease: Lease,
) -> JobRun[Any] | None:
    """Run one claimed job and record how it ended (only while this worker holds it); the
    run, for the kind's ``after``, when it got as far as its handler.

    A job stopped by a lost database connection (see ProgressWriter.should_stop) is handed
    back, not failed: the run does not count. A job's ``error`` never quotes a database
    error (SQL, values): those are in the log."""
    run = None
    try:
        run = job_run(kinds, sessions, store, device, job, lease)
        kinds[job.kind].run(run)
    except Cancelled as exc:
        _record_end(sessions, lease, job.id, JobStatus.CANCELLED, f"cancelled: {exc}")
    except Exception as exc:
        if is_transient(exc):  # the database went away (for long): not the job's fault
            logger.exception("job %s: database unavailable; handing it back", job.id)
            hand_back(sessions, lease.settings, job.id, lease.worker_id)
            return None
        logger.exception("job %s failed", job.id)
        # A user reads the error: a database error's text (SQL, values) stays in the log.
        error = user_error_text(exc) or f"{type(exc).__name__}: {exc}"[:2000]
        _record_end(sessions, lease, job.id, JobStatus.FAILED, error)
    return run


def _record_end(
    sessions: sessionmaker[Session], lease: Lease, job_id: str, status: JobStatus, error: str
) -> None:
    """End a job this worker holds (retried while the database is away)."""

    def end() -> None:
        with sessions() as session:
            if not finish_job(session, job_id, lease.worker_id, status, error=error):
                logger.warning("job %s stopped: this worker no longer holds it", job_id)
            session.commit()

    retry_transient(end, lease.settings.db_retry_seconds, f"job {job_id}: recording its end")


def hand_back(
    sessions: sessionmaker[Session], settings: Settings, job_id: str, worker_id: str
) -> None:
    """Re-queue a job this worker holds without counting the run (its database connection
    was lost), as soon as the database answers again (this worker can do nothing else
    meanwhile). Should a reaper see the expired lease first, the run counts after all."""
    reason = "its worker lost its database connection"

    def release() -> None:
        with sessions() as session:
            release_jobs(
                session, reason, settings.job_max_attempts,
                Job.id == job_id, Job.worker_id == worker_id, handed_back=True,
            )  # fmt: skip

    try:
        # Tried every second at most, so that it comes before a reaper's look at the lease.
        retry_transient(
            release,
            max(settings.db_retry_seconds, settings.job_time_limit_seconds),
            f"job {job_id}: handing it back",
            max_delay=1.0,
        )
        logger.warning("job %s handed back, not counted as an attempt: %s", job_id, reason)
    except Exception:
        logger.exception("job %s: could not hand it back; its lease will expire", job_id)


def run_claimed_job(
    kinds: JobKinds,
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
            run = run_job(kinds, sessions, store, device, job, lease)
        after = kinds[job.kind].after if run is not None else None
        if after is not None and run is not None:  # outside the lease: the job has ended
            try:
                after(run)
            except Exception:  # advice: never the job's failure
                logger.exception("job %s: %s's follow-up failed", job.id, job.kind)
    finally:
        if beat is not None:
            beat.running(None)
        trim()  # the job's freed buffers go back to the OS, not kept until the next job


def run_next_job(kinds: JobKinds, settings: Settings, worker_id: str) -> str | None:
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
            # No reaping here: a task's reaper would not have seen an outage (the API's
            # supervisor reaps, and extends the leases that expired during one).
            job = _next_job(sessions, settings, worker_id, reaper=None)
            if job is None:  # another worker took it first
                return None
            store = make_store(settings)
            run_claimed_job(kinds, sessions, store, device, settings, job, worker_id, beat=beat)
            return job.id
    finally:
        engine.dispose()


def run_worker(
    kinds: JobKinds,
    settings: Settings,
    parent_pid: int | None = None,
    id_suffix: str | None = None,
) -> None:
    """Run queued jobs one at a time until stopped, or until the parent process is gone.

    ``id_suffix`` lets the service that starts this worker know its id (host-pid-suffix).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    worker_id = make_worker_id(os.getpid(), id_suffix)
    limit_arenas(settings.malloc_arena_max)  # a standalone worker inherits no MALLOC_ARENA_MAX
    configure_decode_budget(settings.decode_memory_bytes, wait_seconds=None)  # jobs wait
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
    reaper = LeaseReaper(settings.job_lease_seconds, settings.job_max_attempts)
    try:
        with beat:
            while parent_pid is None or os.getppid() == parent_pid:
                job = _next_job(sessions, settings, worker_id, reaper)
                if job is None:
                    time.sleep(POLL_SECONDS)
                    continue
                run_claimed_job(
                    kinds, sessions, store, device, settings, job, worker_id, parent_pid, beat
                )
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


def _next_job(
    sessions: sessionmaker[Session],
    settings: Settings,
    worker_id: str,
    reaper: LeaseReaper | None,
) -> Job | None:
    """Reap expired leases (any worker's, with a ``reaper``), then claim the oldest queued
    job."""
    try:
        with sessions() as session:
            if reaper is not None:
                requeued, ended = reaper.reap(session)
                if requeued or ended:
                    logger.warning("reaped expired leases: %d re-queued, %d ended",
                                   requeued, ended)  # fmt: skip
            return claim_next_job(session, worker_id, settings.job_lease_seconds)
    except Exception as exc:  # the database is briefly unreachable: poll again later
        if is_transient(exc):
            if reaper is not None:
                reaper.unreachable()
            logger.warning("could not poll for jobs: %s", user_error_text(exc))
        else:
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
    # The worker's entry point moved to the composition root, which binds the job kinds.
    raise SystemExit("the standalone worker is `python -m app.worker` (same P2L_ settings)")
