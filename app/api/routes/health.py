"""Liveness/readiness."""

from collections.abc import Iterator
from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
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


# name -> HELP text of each gauge; the names are a contract with dashboards: keep them.
GAUGES = {
    "p2l_datasets": "Datasets the service holds.",
    "p2l_sources": "Source models in the zoo.",
    "p2l_rankable_sources": "Sources this replica's in-memory index ranks.",
    "p2l_models": "Fine-tuned models.",
    "p2l_job_worker_running": (
        "1 when this service's job runner is up or any worker has a fresh heartbeat."
    ),
    "p2l_workers_alive": "Job workers (local, standalone, Ray tasks) with a fresh heartbeat.",
    "p2l_job_workers_busy": "Workers anywhere (any host) that hold a live job lease.",
}


class Snapshot:
    """A prometheus_client collector of values read once, for one scrape."""

    def __init__(self, gauges: dict[str, int], jobs_by_status: dict[str, int]) -> None:
        self.gauges, self.jobs_by_status = gauges, jobs_by_status

    def collect(self) -> Iterator[Metric]:
        for name, value in self.gauges.items():
            yield GaugeMetricFamily(name, GAUGES[name], value=value)
        jobs = GaugeMetricFamily("p2l_jobs", "Jobs by status.", labels=["status"])
        for status, count in self.jobs_by_status.items():
            jobs.add_metric([status], count)
        yield jobs


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(state: StateDep, session: SessionDep) -> Response:
    """Gauges of what the service holds and does, in Prometheus' text format."""
    catch_up(session, state.store, state.index, state.reference)  # others' changes count too
    alive = len(alive_workers(session))
    gauges = {
        "p2l_datasets": session.scalar(select(func.count()).select_from(Dataset)) or 0,
        "p2l_sources": session.scalar(select(func.count()).select_from(Source)) or 0,
        "p2l_rankable_sources": len(state.index),
        "p2l_models": session.scalar(select(func.count()).select_from(FinetunedModel)) or 0,
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
        )
        or 0,
    }
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    # Every status, 0 included: a series that vanishes at 0 breaks rate() and alerts.
    jobs_by_status = {str(status): counts.get(status, 0) for status in JobStatus}
    # A registry of its own per scrape: the values are read from the database just above,
    # not kept in process-wide metric objects that would have to be kept in step.
    registry = CollectorRegistry()
    registry.register(Snapshot(gauges, jobs_by_status))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
