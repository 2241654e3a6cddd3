"""Project use cases: projects, their keys, quotas and usage, and deleting a project whole.

Who may do what (``Principal.require``): operators create, change and delete projects and
see them all; a project's admins manage its keys and read its usage; everyone else sees
their own project only (another project answers 404).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.imaging import pixel_cache
from app.models import (
    DEFAULT_PROJECT_ID,
    ApiKey,
    Dataset,
    Evidence,
    FinetunedModel,
    Job,
    Project,
    Ranking,
    Role,
    Source,
    utcnow,
)
from app.pagination import is_valid_id, paginate
from app.services.access import (
    ALL_PROJECTS,
    PROJECT_HANDLE,
    Principal,
    create_key,
    find_project,
)
from app.services.models import ModelCache
from app.services.quotas import QUOTAS, active_jobs, count_owned, effective_quotas, storage_bytes
from app.services.sources import record_change
from app.store import ArtifactStore


def visible_project(session: Session, principal: Principal, id_or_name: str) -> Project:
    """The project, if this principal may see it (operators: any; others: their own)."""
    project = find_project(session, id_or_name)
    if project is None or not (principal.is_operator or project.id == principal.project_id):
        raise NotFound(f"no project {id_or_name[:100]!r}")
    return project


def _check_quotas(quotas: dict[str, Any]) -> None:
    if unknown := sorted(set(quotas) - set(QUOTAS)):
        raise InvalidInput(f"unknown quotas {unknown}; known: {sorted(QUOTAS)}")


def create_project(
    session: Session,
    principal: Principal,
    name: str,
    quotas: dict[str, Any] | None = None,
    share_evidence: bool = False,
) -> Project:
    """A new, empty project (operators only); Conflict if the name is taken."""
    principal.require(Role.OPERATOR, "create projects")
    _check_quotas(quotas or {})
    if not PROJECT_HANDLE.fullmatch(name) or is_valid_id(name):
        raise InvalidInput(
            f"project name {name[:100]!r}: 1 to 100 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, and not 32 hex digits (an id's form)"
        )
    if find_project(session, name) is not None:
        raise Conflict(f"a project named {name!r} exists")
    project = Project(
        id=uuid.uuid4().hex, name=name, quotas=quotas or {}, share_evidence=share_evidence
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError:  # a concurrent create of the same name won
        session.rollback()
        raise Conflict(f"a project named {name!r} exists") from None
    return project


def list_projects(
    session: Session, principal: Principal, page_size: int, page_token: str | None
) -> tuple[list[Project], str | None]:
    """Operators: every project; anyone else: their own."""
    if principal.is_operator:
        return paginate(session, Project, page_size, page_token)
    own = session.get(Project, principal.project_id)
    return ([own] if own is not None and page_token is None else []), None


def update_project(
    session: Session,
    principal: Principal,
    id_or_name: str,
    quotas: dict[str, Any] | None,
    share_evidence: bool | None,
) -> Project:
    """Set some quotas (None: unlimited) and whether the project shares its evidence."""
    project = visible_project(session, principal, id_or_name)
    principal.require(Role.OPERATOR, "change a project's quotas or evidence sharing")
    if quotas:
        _check_quotas(quotas)
        project.quotas = {**(project.quotas or {}), **quotas}  # a new dict: JSON is not mutable
    if share_evidence is not None:
        project.share_evidence = share_evidence
    session.flush()
    return project


@dataclass(frozen=True)
class Usage:
    """What a project holds and runs now, against its quotas."""

    project_id: str
    active_jobs: int
    storage_bytes: int
    datasets: int
    sources: int
    models: int
    rankings: int
    jobs: int
    quotas: dict[str, Any]


def project_usage(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    id_or_name: str,
) -> Usage:
    """The project's usage and quotas (its admins and operators)."""
    project = visible_project(session, principal, id_or_name)
    principal.require(Role.ADMIN, "read the project's usage")
    return Usage(
        project_id=project.id,
        active_jobs=active_jobs(session, project.id),
        storage_bytes=storage_bytes(session, store, project.id),
        datasets=count_owned(session, Dataset, project.id),
        sources=count_owned(session, Source, project.id, Source.shared.is_(False)),
        models=count_owned(session, FinetunedModel, project.id),
        rankings=count_owned(session, Ranking, project.id),
        jobs=count_owned(session, Job, project.id),
        quotas=effective_quotas(project, settings),
    )


def list_keys(
    session: Session, principal: Principal, id_or_name: str, page_size: int, page_token: str | None
) -> tuple[list[ApiKey], str | None]:
    """The project's keys, newest first (revoked ones included, marked), never the keys."""
    project = visible_project(session, principal, id_or_name)
    principal.require(Role.ADMIN, "list the project's keys")
    query_filter = ApiKey.project_id == project.id
    return paginate(session, ApiKey, page_size, page_token, where=query_filter)


def add_key(
    session: Session,
    principal: Principal,
    id_or_name: str,
    role: Role,
    name: str,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """A new key of the project, and the key itself (shown once). Admins make keys up to
    their own role; operator keys only operators make."""
    project = visible_project(session, principal, id_or_name)
    principal.require(Role.ADMIN, "create keys")
    if role.level > principal.role.level:
        raise Forbidden(
            f"this key's role ({principal.role.value}) may not create a {role.value} key",
            role=principal.role.value,
            required_role=role.value,
        )
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput(f"expires_at {expires_at.isoformat()} is in the past")
    return create_key(session, project, role, name, expires_at)


def revoke_key(session: Session, principal: Principal, id_or_name: str, key_id: str) -> ApiKey:
    """Revoke a key at once (every replica looks keys up per request)."""
    project = visible_project(session, principal, id_or_name)
    principal.require(Role.ADMIN, "revoke keys")
    key = session.get(ApiKey, key_id[:32])
    if key is None or key.project_id != project.id:
        raise NotFound(f"no key {key_id[:100]!r} in project {project.name!r}")
    if Role(key.role).level > principal.role.level:
        raise Forbidden(f"this key's role ({principal.role.value}) may not revoke a {key.role} key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    session.flush()
    return key


def delete_project(
    session: Session,
    store: ArtifactStore,
    models: ModelCache,
    principal: Principal,
    id_or_name: str,
) -> dict[str, int]:
    """Delete a project and everything it owns (rows, then files, its pixel cache and its
    cached models); refused (409) while any of its jobs is queued or running, and for the
    default project. A source it published stays in the shared zoo. Returns what went."""
    project = visible_project(session, principal, id_or_name)
    principal.require(Role.OPERATOR, "delete projects")
    if project.id == DEFAULT_PROJECT_ID:
        raise Conflict("the default project cannot be deleted")
    # Locked until the commit: a job submitted meanwhile (which locks it too) waits, then
    # finds no project.
    session.refresh(project, with_for_update=True)
    if running := active_jobs(session, project.id):
        raise Conflict(f"the project has {running} queued or running job(s); cancel them first")
    everything = {ALL_PROJECTS: True}

    def owned(table: Any, *where: Any) -> list[Any]:
        query = select(table.id, table.artifact_key).where(table.project_id == project.id, *where)
        return list(session.execute(query.execution_options(**everything)))

    with_files: dict[str, tuple[Any, list[Any]]] = {
        "datasets": (Dataset, owned(Dataset)),
        "sources": (Source, owned(Source, Source.shared.is_(False))),
        "models": (FinetunedModel, owned(FinetunedModel)),
    }
    counts = {noun: len(rows) for noun, (_, rows) in with_files.items()}
    for source_id, _ in with_files["sources"][1]:
        record_change(session, source_id, "remove")  # every replica's index drops it
    for table, rows in with_files.values():
        ids = [row_id for row_id, _ in rows]
        session.execute(delete(table).where(table.id.in_(ids)).execution_options(**everything))
    for table, noun in ((Ranking, "rankings"), (Job, "jobs"), (Evidence, "evidence")):
        done = session.execute(
            delete(table).where(table.project_id == project.id).execution_options(**everything)
        )
        counts[noun] = int(getattr(done, "rowcount", 0) or 0)
    done = session.execute(delete(ApiKey).where(ApiKey.project_id == project.id))
    counts["keys"] = int(getattr(done, "rowcount", 0) or 0)
    session.delete(project)
    session.commit()  # rows first: a file no row owns is swept, a row without files is not
    for _, rows in with_files.values():
        for _, key in rows:
            store.delete(key)
    for dataset_id, _ in with_files["datasets"][1]:
        pixel_cache.delete_entries(store, dataset_id)
    for model_id, _ in with_files["models"][1]:
        models.forget(model_id)
    return counts
