"""Quotas: what one project may hold and run, and the checks that refuse a request past them.

A project's quotas are its own where an operator set them (None: unlimited), else the
settings' defaults (P2L_QUOTA_*). A refusal names the quota, the usage and the limit.
"""

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import QuotaExceeded, StorageFull
from app.imaging import pixel_cache
from app.models import Dataset, FinetunedModel, Job, Project, Source
from app.services.access import ALL_PROJECTS
from app.store import ArtifactStore

# Every quota, with the setting that holds its default.
QUOTAS = {
    "max_active_jobs": "quota_max_active_jobs",
    "max_job_seconds": "quota_max_job_seconds",
    "max_storage_bytes": "quota_max_storage_bytes",
    "max_event_streams_per_key": "quota_max_event_streams_per_key",
    "requests_per_minute_per_key": "quota_requests_per_minute_per_key",
}
ACTIVE = ("queued", "running")


def effective_quotas(project: Project, settings: Settings) -> dict[str, Any]:
    """The project's quotas in force: its own where set (None: unlimited), else the default."""
    own = project.quotas or {}
    return {name: own.get(name, getattr(settings, setting)) for name, setting in QUOTAS.items()}


def project_quotas(session: Session, project_id: str, settings: Settings) -> dict[str, Any]:
    """``effective_quotas`` of the project with this id."""
    project = session.get(Project, project_id)
    if project is None:  # deleted under a request: nothing left to protect
        return {name: getattr(settings, setting) for name, setting in QUOTAS.items()}
    return effective_quotas(project, settings)


def storage_bytes(session: Session, store: ArtifactStore, project_id: str) -> int:
    """Bytes the project's datasets, models, private sources and their pixel cache take:
    as counted when each was stored (a row from before revision 0010: counted now)."""
    total = 0
    dataset_ids = set()
    for table in (Dataset, FinetunedModel, Source):
        query = select(table.id, table.artifact_key, table.stored_bytes).where(
            table.project_id == project_id
        )
        if table is Source:
            query = query.where(Source.shared.is_(False))
        for row_id, key, stored in session.execute(query.execution_options(**{ALL_PROJECTS: True})):
            total += stored if stored is not None else store.size_bytes(key)
            if table is Dataset:
                dataset_ids.add(row_id)
    cached = sum(
        entry.nbytes for entry in pixel_cache.list_entries(store) if entry.dataset_id in dataset_ids
    )
    return total + cached


def count_owned(session: Session, table: Any, project_id: str, *where: Any) -> int:
    query = select(func.count()).select_from(table).where(table.project_id == project_id, *where)
    return int(session.scalar(query.execution_options(**{ALL_PROJECTS: True})) or 0)


def active_jobs(session: Session, project_id: str) -> int:
    """The project's queued and running jobs."""
    return count_owned(session, Job, project_id, Job.status.in_(ACTIVE))


def check_active_jobs(session: Session, settings: Settings, project_id: str) -> None:
    """QuotaExceeded (429 + Retry-After) when the project runs its most jobs already.

    The project's row is locked until the caller commits (PostgreSQL): two submissions of
    one project are counted one after the other, so both cannot take the last place.
    """
    session.get(Project, project_id, with_for_update=True)
    limit = project_quotas(session, project_id, settings)["max_active_jobs"]
    if limit is None:
        return
    active = active_jobs(session, project_id)
    if active >= limit:
        raise QuotaExceeded(
            f"the project has {active} active (queued or running) jobs, its quota "
            f"max_active_jobs is {limit}; wait for one to end or cancel one",
            quota="max_active_jobs",
            usage=active,
            limit=limit,
            retry_after=30,
        )


def check_job_seconds(
    session: Session, settings: Settings, project_id: str, estimated_seconds: float
) -> None:
    """QuotaExceeded (422) when a job's estimate is above the project's longest allowed."""
    limit = project_quotas(session, project_id, settings)["max_job_seconds"]
    if limit is not None and estimated_seconds > limit:
        raise QuotaExceeded(
            f"the job is estimated at {estimated_seconds:,.0f} s, above the project's quota "
            f"max_job_seconds of {limit:,.0f} s; ask for fewer epochs or a smaller input",
            quota="max_job_seconds",
            usage=round(estimated_seconds, 1),
            limit=limit,
            status=422,
        )


def check_storage(
    session: Session, store: ArtifactStore, settings: Settings, project_id: str, adding: int
) -> None:
    """StorageFull (507) when storing ``adding`` more bytes would pass the project's quota."""
    limit = project_quotas(session, project_id, settings)["max_storage_bytes"]
    if limit is None:
        return
    used = storage_bytes(session, store, project_id)
    if used + adding > limit:
        raise StorageFull(
            f"the project stores {used:,} bytes; {adding:,} more would pass its quota "
            f"max_storage_bytes of {limit:,}; delete datasets or models first",
            quota="max_storage_bytes",
            usage=used,
            limit=limit,
        )
