"""Projects, their API keys and usage, and who a key is (see app.services.projects)."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi import Path as PathParam

from app.api.deps import PAGE_PROBLEMS, PageSize, PageToken, PrincipalDep, SessionDep, StateDep
from app.api.problems import problem_responses
from app.models import Project, Role, utcnow
from app.schemas import (
    AuditOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    Page,
    ProjectCreate,
    ProjectOut,
    ProjectPatch,
    Quotas,
    UsageOut,
    WhoAmIOut,
)
from app.services import audit
from app.services import projects as service
from app.services.audit import AUDIT_DETAIL
from app.services.quotas import effective_quotas

router = APIRouter(tags=["projects"])
ProjectRef = Annotated[
    str,
    PathParam(
        description="The project's id (32 lowercase hex digits) or its name. Other than "
        "operators, a key sees only its own project (any other is a 404)."
    ),
]
KeyId = Annotated[
    str,
    PathParam(description="The key's `id` (GET /v1/projects/{project_id}/keys), not the key."),
]


def project_out(state: StateDep, project: Project) -> ProjectOut:
    """A project with its quotas in force."""
    return ProjectOut(
        id=project.id,
        name=project.name,
        created_at=project.created_at,
        quotas=Quotas(**effective_quotas(project, state.settings)),
        share_evidence=project.share_evidence,
    )


@router.get("/v1/whoami", response_model=WhoAmIOut, summary="Who this key is")
def whoami(principal: PrincipalDep) -> WhoAmIOut:
    """The project the request acts in, the key's role and name."""
    return WhoAmIOut(
        project_id=principal.project_id,
        project_name=principal.project_name,
        role=principal.role.value,
        key_id=principal.key_id,
        key_name=principal.key_name,
        authenticated=principal.authenticated,
    )


@router.post(
    "/v1/projects",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectOut,
    summary="Create a project (operators)",
    responses=problem_responses(_409="A project of that name exists"),
)
def create_project(
    state: StateDep, session: SessionDep, principal: PrincipalDep, body: ProjectCreate
) -> ProjectOut:
    """An empty project; make its first key with ``POST /v1/projects/{id}/keys``."""
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    project = service.create_project(session, principal, body.name, quotas, body.share_evidence)
    return project_out(state, project)


@router.get(
    "/v1/projects",
    response_model=Page[ProjectOut],
    summary="List projects (operators: all; others: their own)",
    responses=PAGE_PROBLEMS,
)
def list_projects(
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[ProjectOut]:
    """Newest first."""
    rows, token = service.list_projects(session, principal, page_size, page_token)
    return Page[ProjectOut](items=[project_out(state, p) for p in rows], next_page_token=token)


@router.get("/v1/projects/{project_id}", response_model=ProjectOut, summary="Get a project")
def get_project(
    state: StateDep, session: SessionDep, principal: PrincipalDep, project_id: ProjectRef
) -> ProjectOut:
    """By id or name."""
    return project_out(state, service.visible_project(session, principal, project_id))


@router.patch(
    "/v1/projects/{project_id}",
    response_model=ProjectOut,
    summary="Change a project's quotas or evidence sharing (operators)",
)
def update_project(
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    project_id: ProjectRef,
    body: ProjectPatch,
) -> ProjectOut:
    """Quotas left out keep their value; null makes one unlimited."""
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    project = service.update_project(session, principal, project_id, quotas, body.share_evidence)
    return project_out(state, project)


@router.delete(
    "/v1/projects/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a project and everything it owns (operators)",
    responses=problem_responses(_409="Its jobs are queued or running, or it is the default"),
)
def delete_project(
    request: Request,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    project_id: ProjectRef,
) -> Response:
    """Its datasets, private sources, rankings, jobs, models, evidence and keys go; the
    audit log says how many of each."""
    counts = service.delete_project(session, state.store, state.models, principal, project_id)
    deleted = ", ".join(f"{n} {noun}" for noun, n in counts.items())
    setattr(request.state, AUDIT_DETAIL, f"deleted {deleted}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/projects/{project_id}/usage",
    response_model=UsageOut,
    summary="What a project holds and runs, against its quotas (admins)",
)
def project_usage(
    state: StateDep, session: SessionDep, principal: PrincipalDep, project_id: ProjectRef
) -> UsageOut:
    """Active jobs, stored bytes, object counts and the quotas in force."""
    usage = service.project_usage(session, state.store, state.settings, principal, project_id)
    return UsageOut.model_validate(usage.__dict__)


@router.post(
    "/v1/projects/{project_id}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Create an API key (admins; the key is shown once)",
)
def create_key(
    session: SessionDep, principal: PrincipalDep, project_id: ProjectRef, body: KeyCreate
) -> KeyCreated:
    """Only its SHA-256 is stored: keep the ``key`` of this answer, it is not shown again."""
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row, key = service.add_key(session, principal, project_id, Role(body.role), body.name, expires)
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=key)


@router.get(
    "/v1/projects/{project_id}/keys",
    response_model=Page[KeyOut],
    summary="List a project's API keys (admins)",
    responses=PAGE_PROBLEMS,
)
def list_keys(
    session: SessionDep,
    principal: PrincipalDep,
    project_id: ProjectRef,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[KeyOut]:
    """Newest first, revoked ones included; never the keys themselves."""
    rows, token = service.list_keys(session, principal, project_id, page_size, page_token)
    return Page[KeyOut](items=[KeyOut.model_validate(r) for r in rows], next_page_token=token)


@router.delete(
    "/v1/projects/{project_id}/keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key (admins): it stops working at once, on every replica",
)
def revoke_key(
    session: SessionDep, principal: PrincipalDep, project_id: ProjectRef, key_id: KeyId
) -> Response:
    """The key stays listed, with ``revoked_at``."""
    service.revoke_key(session, principal, project_id, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/audit",
    response_model=Page[AuditOut],
    tags=["audit"],
    summary="The audit log, newest first (admins: their project; operators: any, or all)",
    responses=PAGE_PROBLEMS,
)
def list_audit(
    session: SessionDep,
    principal: PrincipalDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
    all_projects: Annotated[
        bool, Query(description="Operators: every project's entries, not one project's.")
    ] = False,
) -> Page[AuditOut]:
    """Every state-changing request: time, key id, project, action, object id, status."""
    rows, token = audit.list_entries(session, principal, page_size, page_token, all_projects)
    return Page[AuditOut](items=[AuditOut.model_validate(r) for r in rows], next_page_token=token)
