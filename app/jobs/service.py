"""Job records: submit, read, cancel, and recover after a crash. The database is the queue."""

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import Job, utcnow
from app.pagination import get_by_id, paginate

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled",
)  # fmt: skip
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def submit_job(session: Session, kind: str, params: dict[str, Any]) -> Job:
    """Queue a job; a worker picks it up."""
    job = Job(id=uuid.uuid4().hex, kind=kind, status=QUEUED, params=params, progress={})
    session.add(job)
    session.commit()
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
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id} already finished ({job.status})")
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=CANCELLED, finished_at=utcnow(), error="cancelled before it started")
    )
    session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    session.commit()
    session.refresh(job)
    return job


def claim_next_job(session: Session, worker_pid: int) -> Job | None:
    """Atomically move the oldest queued job to running for this worker."""
    candidate = session.scalar(
        select(Job.id).where(Job.status == QUEUED).order_by(Job.created_at).limit(1)
    )
    if candidate is None:
        return None
    claimed = session.execute(
        update(Job)
        .where(Job.id == candidate, Job.status == QUEUED)
        .values(status=RUNNING, worker_pid=worker_pid, started_at=utcnow())
    )
    session.commit()
    return session.get(Job, candidate) if claimed.rowcount == 1 else None


def fail_orphaned_jobs(session: Session, reason: str, worker_pid: int | None = None) -> int:
    """Mark running jobs (of one worker, or all) failed: their worker is gone."""
    query = update(Job).where(Job.status == RUNNING)
    if worker_pid is not None:
        query = query.where(Job.worker_pid == worker_pid)
    result = session.execute(query.values(status=FAILED, error=reason, finished_at=utcnow()))
    session.commit()
    return result.rowcount
