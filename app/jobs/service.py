"""Job records: submit, read, cancel; claim, renew and reap leases. The database is the queue.

A worker owns a running job through a lease (``worker_id``, ``lease_expires_at``) that it
renews while it runs. A lease that is not renewed in time is reaped by any worker or API:
the job is re-queued while it has attempts left, else failed with the reason.
"""

import logging
import socket
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from app.db import rows_matched
from app.errors import Conflict
from app.imaging import pixel_cache
from app.models import TERMINAL_STATUSES, Dataset, FinetunedModel, Job, JobStatus, Source, utcnow
from app.pagination import get_by_id, paginate
from app.store import ArtifactStore

logger = logging.getLogger("p2l")

# The phase a job's progress ends in (see JobProgress in app.schemas).
FINAL_PHASES = {
    JobStatus.SUCCEEDED: "done",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
QUEUED_PROGRESS = {"phase": "queued", "label": "waiting for a worker"}
# A worker just took the job: it loads the data and the model before the first epoch.
LOADING_PROGRESS = {"phase": "loading", "label": "loading the images and the model"}
# The progress fields of an auto_search phase that name the candidate being tried.
CANDIDATE_FIELDS = ("candidate", "candidate_index", "candidates")
# Fields that describe a moment of the run, not its outcome: gone once it has ended.
_TRANSIENT = ("step", "steps_per_epoch", *CANDIDATE_FIELDS)


def final_progress(
    progress: dict[str, Any] | None,
    status: JobStatus,
    started_at: datetime | None,
    error: str | None = None,
) -> dict[str, Any]:
    """A job's progress once it has ended: phase done/failed/cancelled, ETA 0, history kept."""
    final = {k: v for k, v in (progress or {}).items() if k not in _TRANSIENT}
    done = int(final.get("epochs_done") or 0)
    elapsed = (utcnow() - started_at).total_seconds() if started_at is not None else None
    took = f" in {elapsed:.0f} s" if elapsed is not None else ""
    phase = FINAL_PHASES[status]
    epochs = f" {done} epochs" if done else ""  # an evaluation job trains none
    if status == JobStatus.SUCCEEDED:
        label = f"done:{epochs}{took}" if epochs or took else "done"
        final["epochs_planned"] = done  # the bar ends full (early stopping ends sooner)
    elif status == JobStatus.CANCELLED:
        label = f"cancelled after{epochs}{took}" if epochs or took else "cancelled"
    else:
        after = f" after{epochs}{took}" if epochs or took else ""
        label = f"failed{after}: {error or 'unknown error'}"[:300]
    final.update(phase=phase, label=label, epochs_done=done, eta_seconds=0)
    if elapsed is not None:
        final["elapsed_seconds"] = round(elapsed, 1)
    return final


def submit_job(session: Session, kind: str, params: dict[str, Any]) -> Job:
    """Queue a job (the caller commits, with whatever else the request wrote)."""
    job = Job(
        id=uuid.uuid4().hex,
        kind=kind,
        status=JobStatus.QUEUED,
        params=params,
        progress=QUEUED_PROGRESS,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    """The job with this id, or NotFound."""
    return get_by_id(session, Job, job_id, "job")


def list_jobs(
    session: Session, page_size: int, page_token: str | None
) -> tuple[list[Job], str | None]:
    """Newest first, one page at a time."""
    return paginate(session, Job, page_size, page_token)


def cancel_job(session: Session, job_id: str) -> Job:
    """Cancel a queued job at once; ask a running one to stop (within one training step)."""
    job = get_job(session, job_id)
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} already finished ({job.status})")
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
            error="cancelled before it started",
            progress={
                **final_progress(None, JobStatus.CANCELLED, None),
                "label": "cancelled before it started",
            },
        )
    )
    session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    session.commit()
    session.refresh(job)
    return job


def make_worker_id(pid: int, suffix: str | None = None) -> str:
    """A worker's id: host, process id and a random suffix (pids are reused; hosts differ)."""
    return f"{socket.gethostname()[:40]}-{pid}-{suffix or uuid.uuid4().hex[:8]}"


def delete_job(session: Session, job_id: str) -> Job:
    """Remove a finished job's record (its model, if any, stays); Conflict while it runs.

    Returns the deleted job: the caller removes any files that were the job's alone.
    """
    job = get_job(session, job_id)
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first, then delete it")
    session.delete(job)
    session.commit()
    return job


def claim_next_job(session: Session, worker_id: str, lease_seconds: float) -> Job | None:
    """Atomically move the oldest queued job to running, leased to this worker."""
    candidate = session.scalar(
        select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at).limit(1)
    )
    if candidate is None:
        return None
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == candidate, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            started_at=now,
            progress=LOADING_PROGRESS,  # progress and error are the current attempt's
            error=None,
        )
    )
    session.commit()
    if rows_matched(claimed) != 1:
        return None
    return session.get(Job, candidate, populate_existing=True)


def renew_lease(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """Extend this worker's lease on a running job; False if the lease was lost."""
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    session.commit()
    return rows_matched(renewed) == 1


def finish_job(
    session: Session, job_id: str, worker_id: str, status: JobStatus, **values: Any
) -> bool:
    """Move a job this worker holds to a terminal state (caller commits); False if not ours.

    Its progress becomes final (see ``final_progress``) unless ``values`` gives one.
    """
    finished = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
        .values(status=status, finished_at=utcnow(), lease_expires_at=None, **values)
    )
    if rows_matched(finished) != 1:
        return False
    if "progress" not in values:
        # Read after the status change, which holds the row (PostgreSQL) or the database
        # (SQLite) until the commit: a progress write waits, then matches nothing (the job
        # is no longer running), so the final progress has every epoch written before it.
        row = session.execute(
            select(Job.progress, Job.started_at).where(Job.id == job_id).with_for_update()
        ).one()
        progress = final_progress(row.progress, status, row.started_at, values.get("error"))
        session.execute(update(Job).where(Job.id == job_id).values(progress=progress))
    return True


def release_jobs(
    session: Session,
    reason: str,
    max_attempts: int,
    *which: ColumnElement[bool],
    handed_back: bool = False,
) -> tuple[int, int]:
    """End the running jobs matching ``which`` whose worker is gone: (re-queued, ended).

    A job is re-queued while it has attempts left, otherwise failed (cancelled if that was
    asked) with the reason. ``handed_back``: the worker gave the job back on purpose (it
    was stopped), so the run is not counted and the job is re-queued whatever its attempts.
    Each update re-checks ``which``, so a renewal in between wins. A re-queued job has not
    failed: its ``error`` is cleared, and why it waits again is its progress label.
    """
    rows = session.execute(
        select(Job.id, Job.attempts, Job.cancel_requested, Job.progress, Job.started_at).where(
            Job.status == JobStatus.RUNNING, *which
        )
    ).all()
    requeued = ended = 0
    for job_id, attempts, cancel_requested, progress, started_at in rows:
        attempt = f"attempt {max(attempts, 1)} of {max_attempts}"
        values: dict[str, Any]
        if cancel_requested:
            values = {"status": JobStatus.CANCELLED, "error": f"cancelled: {reason} ({attempt})"}
        elif handed_back:
            # The attempt bound is for lost leases (killed or hung workers, poison jobs);
            # a stopped worker says nothing about the job, so rolling deploys cost none.
            values = {
                "status": JobStatus.QUEUED,
                "attempts": max(attempts - 1, 0),
                "error": f"handed back, not counted as an attempt: {reason}",
            }
        elif attempts < max_attempts:
            values = {"status": JobStatus.QUEUED, "error": f"re-queued after {attempt}: {reason}"}
        else:
            values = {"status": JobStatus.FAILED, "error": f"{reason} ({attempt})"}
        # A re-queued job is nobody's; an ended one keeps the id of the worker it lost.
        if values["status"] == JobStatus.QUEUED:
            # Not an error of the job (it has not failed): why it waits again is in its
            # progress label while it waits, and in the log.
            why, values["error"] = values["error"], None
            values["worker_id"] = None
            values["progress"] = {**QUEUED_PROGRESS, "label": f"waiting for a worker ({why})"}
        else:
            values["finished_at"] = utcnow()
            values["progress"] = final_progress(
                progress, values["status"], started_at, values["error"]
            )
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, *which)
            .values(lease_expires_at=None, **values)
        )
        if rows_matched(done) == 1:
            requeued += values["status"] == JobStatus.QUEUED
            ended += values["status"] != JobStatus.QUEUED
    session.commit()
    return requeued, ended


def release_worker_jobs(
    session: Session, worker_id: str, reason: str, max_attempts: int, handed_back: bool = False
) -> tuple[int, int]:
    """Release the jobs of a worker known to be gone (it exited, or was stopped)."""
    return release_jobs(
        session, reason, max_attempts, Job.worker_id == worker_id, handed_back=handed_back
    )


def reap_expired_leases(session: Session, max_attempts: int) -> tuple[int, int]:
    """Release running jobs whose lease expired: (re-queued, ended).

    A running job without a lease (claimed before leases existed) counts as expired.
    """
    expired = or_(Job.lease_expires_at < utcnow(), Job.lease_expires_at.is_(None))
    return release_jobs(session, "its worker stopped renewing its lease", max_attempts, expired)


def extend_running_leases(session: Session, lease_seconds: float) -> int:
    """Give every running job's lease at least ``lease_seconds`` more; how many it changed."""
    until = utcnow() + timedelta(seconds=lease_seconds)
    extended = session.execute(
        update(Job)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at.is_not(None),
            Job.lease_expires_at < until,
        )
        .values(lease_expires_at=until)
    )
    session.commit()
    return rows_matched(extended)


class LeaseReaper:
    """Reaps expired leases (``reap_expired_leases``), except right after an outage.

    While the database is away no worker can renew its lease either, so leases that expired
    meanwhile say nothing about the workers. A reaper told its reaps could not reach the
    database (``unreachable``) for a third of a lease (the renewals' interval) gives every
    running job one lease more at its first reap that can: a worker that trained on through
    the outage renews it, and its run is not counted as an attempt; a worker that really
    died is reaped a lease later.
    """

    def __init__(self, lease_seconds: float, max_attempts: int) -> None:
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._last_reached: float | None = None  # monotonic time of the last reap
        # Since when the database has been away: from the last reap before the first failure
        # (a hung connection fails late), or that failure if none came before it.
        self._away_since: float | None = None

    def unreachable(self) -> None:
        """Note that a reap (or what came with it) could not reach the database."""
        if self._away_since is None:
            self._away_since = self._last_reached or time.monotonic()

    def reap(self, session: Session) -> tuple[int, int]:
        """(re-queued, ended), as ``reap_expired_leases``; (0, 0) right after an outage."""
        since = self._away_since
        if since is not None and time.monotonic() - since >= self.lease_seconds / 3:
            if extended := extend_running_leases(session, self.lease_seconds):
                logger.warning("database reached again: %d running lease(s) extended, not "
                               "reaped", extended)  # fmt: skip
            result = (0, 0)
        else:
            result = reap_expired_leases(session, self.max_attempts)
        self._away_since = None
        self._last_reached = time.monotonic()
        return result


def sweep_unowned_artifacts(
    session: Session, store: ArtifactStore, older_than_seconds: float
) -> int:
    """Delete dataset, model, source and pixel-cache folders no row owns; returns how many.

    Such a folder was published by a process that died before its commit. Recent ones are
    spared: a live worker (or API) elsewhere may be about to commit them.
    """
    cutoff = time.time() - older_than_seconds
    removed = 0
    for prefix, table in (("datasets", Dataset), ("models", FinetunedModel), ("sources", Source)):
        known = set(session.scalars(select(table.artifact_key)))
        for key in store.keys_under(prefix) - known:
            # A folder last written to before the cutoff is no live writer's (see published_at).
            try:
                published = store.published_at(key)
            except FileNotFoundError:  # another replica swept it meanwhile
                continue
            if published <= cutoff:
                store.delete(key)
                removed += 1
    # Pixel-cache entries of deleted datasets (a crash between the two deletes, or a job that
    # cached a dataset being deleted): they would only count against the cache's bound.
    datasets = set(session.scalars(select(Dataset.id)))
    for entry in pixel_cache.list_entries(store):
        if entry.dataset_id not in datasets and entry.stamp / 1e9 <= cutoff:
            store.delete(entry.key)
            removed += 1
    return removed
