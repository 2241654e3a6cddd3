"""Request dependencies: settings, database session, artifact store, reference network, auth."""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any
from urllib.parse import parse_qs

import anyio
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers
from starlette.routing import compile_path, get_route_path
from starlette.types import Scope

from app.api.limits import PRINCIPAL, UPLOAD_TYPES, Authenticate, RouteRule, RouteRules
from app.api.problems import problem_responses
from app.api.streams import SnapshotCache, StreamSlots, read_job_snapshot
from app.config import Settings
from app.db import DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE, is_transient
from app.errors import ServiceUnavailable
from app.jobs.runner import JobRunner
from app.models import Dataset, FinetunedModel, Source
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import SignatureIndex
from app.services import handles
from app.services.access import Principal, authenticate, scope_session
from app.services.context import Context
from app.services.models import ModelCache
from app.services.quotas import project_quotas
from app.store import ArtifactStore


@dataclass
class ServiceState:
    """What the app builds once at start-up and every request shares."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    reference: ReferenceNetwork
    index: SignatureIndex
    models: ModelCache = field(default_factory=ModelCache)
    runner: JobRunner | None = None
    streams: StreamSlots = field(init=False)
    job_snapshots: SnapshotCache = field(init=False)

    def __post_init__(self) -> None:
        self.streams = StreamSlots(self.settings.max_event_streams)
        self.job_snapshots = SnapshotCache(partial(read_job_snapshot, self.sessions))


def get_state(request: Request) -> ServiceState:
    """The running service's shared state."""
    return request.app.state.service


def get_session(
    request: Request, state: Annotated[ServiceState, Depends(get_state)]
) -> Iterator[Session]:
    """One database session per request, scoped to its principal's project (see
    ``app.services.access``): committed when the route returns, rolled back if it raises,
    before the response is sent (so a failed commit is the client's error too)."""
    with state.sessions() as session:
        # Every /v1 request has its principal (RequestLimits refuses it otherwise); the
        # routes outside /v1 (health, metrics) read service-wide state.
        principal = request.scope.get("state", {}).get(PRINCIPAL)
        if isinstance(principal, Principal):
            scope_session(session, principal.project_id)
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


StateDep = Annotated[ServiceState, Depends(get_state)]
PageToken = Annotated[
    str | None,
    Query(
        max_length=512,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="next_page_token of the previous page, as given (a token the service "
        "did not issue: 400; outside this pattern: 422).",
    ),
]
PageSize = Annotated[
    int, Query(ge=1, le=200, description="Items per page, 1 to 200; the last page may hold fewer.")
]
# The list routes' responses: a page token the service did not issue is a 400.
PAGE_PROBLEMS = problem_responses(_400="page_token is not one this service issued")
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _resource_id(noun: str, where: str) -> Any:
    """A path parameter naming one resource by its id."""
    return PathParam(
        description=f"The {noun}'s id (32 lowercase hex digits): {where}. An id this "
        "project cannot see is a 404."
    )


def _resource_handle(noun: str, where: str) -> Any:
    """A path parameter naming one resource by its id or its name (``app.services.handles``)."""
    return PathParam(
        description=f"The {noun}'s id (32 lowercase hex digits: {where}) or its name (unique "
        f"in the project). One this project cannot see is a 404.",
        max_length=255,
    )


def _dataset_id(
    session: SessionDep,
    dataset_id: Annotated[str, _resource_handle("dataset", "`id` of POST or GET /v1/datasets")],
) -> str:
    return handles.resolve_id(session, Dataset, dataset_id, "dataset")


def _source_id(
    session: SessionDep,
    source_id: Annotated[str, _resource_handle("source", "`id` of POST or GET /v1/sources")],
) -> str:
    return handles.resolve_id(session, Source, source_id, "source")


def _model_id(
    session: SessionDep,
    model_id: Annotated[
        str, _resource_handle("model", "a succeeded job's `model_id`, or `id` of GET /v1/models")
    ],
) -> str:
    return handles.resolve_id(session, FinetunedModel, model_id, "model")


# The id of the dataset, source or model a path names by id or by name: what the routes and
# use cases below them get (never a name, so no file key or log line is built from one). An
# id is passed on unread: the use case's lookup answers 404 after its cheaper checks.
DatasetId = Annotated[str, Depends(_dataset_id)]
SourceId = Annotated[str, Depends(_source_id)]
ModelId = Annotated[str, Depends(_model_id)]
RankingId = Annotated[str, _resource_id("ranking", "`id` of POST or GET /v1/rankings")]
JobId = Annotated[str, _resource_id("job", "`id` of POST /v1/finetunes or GET /v1/jobs")]

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key (`python -m app keys create`, POST /v1/projects/{id}/keys, or "
    "one of P2L_API_KEYS). Needed by every /v1 route once any key exists; an open service "
    "(no keys) ignores it. The key's role says what it may do: viewer (reads), member "
    "(creates and deletes in its project), admin (also its keys, usage and audit log), "
    "operator (service-wide).",
)
# Documentation only: the key is checked by ``RequestLimits`` from the headers, before the
# body is read; this puts the *Authorize* lock on every /v1 operation in Swagger UI.
KeyDocumented = Security(_api_key_header)


def get_principal(request: Request) -> Principal:
    """Who the request acts as (found by ``RequestLimits`` before the route ran)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    if not isinstance(principal, Principal):  # a route outside /v1 asked: a wiring mistake
        raise RuntimeError(f"{request.url.path} is not authenticated (only /v1 routes are)")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_context(state: StateDep, session: SessionDep, principal: PrincipalDep) -> Context:
    """The use cases' context for this request: its session (scoped to the principal's
    project), the shared state, and the principal."""
    return Context(
        session=session,
        store=state.store,
        index=state.index,
        reference=state.reference,
        settings=state.settings,
        principal=principal,
    )


ContextDep = Annotated[Context, Depends(get_context)]


def route_rules(app: FastAPI) -> RouteRules:
    """What the middlewares need to know of the operation a request reaches, read from the
    OpenAPI document: whether it takes an upload (a multipart or binary body: the upload
    cap; every other body gets the JSON cap, whatever its Content-Type says), whether it
    acts for someone (every /v1 operation: it needs a principal), and its path template
    (the audit log's action)."""
    operations: list[tuple[re.Pattern[str], str, RouteRule]] = []

    def rules(scope: Scope) -> RouteRule:
        if not operations:  # every route is in place by the first request
            for template, by_method in app.openapi()["paths"].items():
                pattern = compile_path(template)[0]
                for method, operation in by_method.items():
                    content = operation.get("requestBody", {}).get("content", {})
                    upload = any(kind.startswith(UPLOAD_TYPES) for kind in content)
                    rule = RouteRule(upload, template.startswith("/v1/"), template)
                    operations.append((pattern, method.upper(), rule))
        path = get_route_path(scope)  # below the root path (a proxy's prefix), as routes see it
        for pattern, method, rule in operations:
            if method == scope["method"] and pattern.match(path):
                return rule
        # No operation: a 404 or 405 to come; a /v1 path still needs a key first, so that
        # an anonymous caller learns nothing of which paths exist.
        return RouteRule(False, path.startswith("/v1/"), None)

    return rules


def authenticator(sessions: Callable[[], Session], settings: Settings) -> Authenticate:
    """``RequestLimits``' check of a request's key, from its headers and ``?project=``: the
    principal, the key's request rate limit (None: unlimited), or a ServiceError to answer
    (401, 404; 503 while the database is away: a key cannot be told wrong then)."""

    def check(scope: Scope) -> tuple[Principal, int | None]:
        offered = Headers(scope=scope).get(API_KEY_HEADER)
        project = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("project")
        with sessions() as session:
            try:
                principal = authenticate(
                    session, settings, offered, project[0] if project else None
                )
                if not principal.authenticated:
                    return principal, None  # an open service counts nothing
                # The key's own project's: naming another with ?project= changes no limit.
                quotas = project_quotas(session, principal.key_project_id, settings)
            except DBAPIError as exc:
                if is_transient(exc):
                    raise ServiceUnavailable(
                        DATABASE_UNAVAILABLE, DATABASE_RETRY_AFTER_SECONDS
                    ) from exc
                raise
        return principal, quotas["requests_per_minute_per_key"]

    async def run(scope: Scope) -> tuple[Principal, int | None]:
        return await anyio.to_thread.run_sync(check, scope)

    return run
