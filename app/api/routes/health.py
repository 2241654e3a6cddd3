"""Liveness/readiness."""

from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import distinct, func, select, text

from app.api.deps import SessionDep, StateDep
from app.db import DATABASE_RETRY_AFTER_SECONDS
from app.jobs.estimates import alive_workers
from app.models import Dataset, FinetunedModel, Job, JobStatus, Source, utcnow
from app.schemas import HealthOut
from app.services.sources import catch_up

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness and database readiness")
def health(session: SessionDep) -> JSONResponse:
    """200 when the database answers, 503 otherwise."""
    try:
        session.execute(text("SELECT 1"))
        database, status_code = "ok", 200
    except Exception as exc:
        session.rollback()  # so the managed session does not try to commit a dead connection
        database, status_code = f"unavailable: {type(exc).__name__}", 503
    body = HealthOut(
        status="ok" if status_code == 200 else "degraded",
        database=database,
        version=version("p2l-service"),
    )
    # Not ready: a balancer takes the replica out; a client may come back shortly.
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)} if status_code == 503 else None
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(state: StateDep, session: SessionDep) -> str:
    """Gauges of what the service holds and does, in Prometheus' text format."""
    catch_up(session, state.store, state.index, state.reference)  # others' changes count too
    alive = len(alive_workers(session))
    gauges = {
        "p2l_datasets": session.scalar(select(func.count()).select_from(Dataset)),
        "p2l_sources": session.scalar(select(func.count()).select_from(Source)),
        "p2l_rankable_sources": len(state.index),
        "p2l_models": session.scalar(select(func.count()).select_from(FinetunedModel)),
        # This service's own runner is up, or any worker anywhere has a fresh heartbeat.
        "p2l_job_worker_running": int(
            (state.runner is not None and state.runner.alive) or alive > 0
        ),
        # Workers (local, standalone, Ray tasks) whose heartbeat is fresh.
        "p2l_workers_alive": alive,
        # Workers anywhere (local, standalone, other hosts) that hold a live job lease.
        "p2l_job_workers_busy": session.scalar(
            select(func.count(distinct(Job.worker_id))).where(
                Job.status == JobStatus.RUNNING, Job.lease_expires_at >= utcnow()
            )
        ),
    }
    lines = []
    for name, value in gauges.items():
        lines += [f"# TYPE {name} gauge", f"{name} {value}"]
    lines.append("# TYPE p2l_jobs gauge")
    jobs_by_status = dict(
        session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    )
    for status in JobStatus:
        lines.append(f'p2l_jobs{{status="{status}"}} {jobs_by_status.get(status, 0)}')
    return "\n".join(lines) + "\n"
