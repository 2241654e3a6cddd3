"""Request dependencies: settings, database session, artifact store, reference network, auth."""

import hashlib
import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers
from starlette.routing import compile_path, get_route_path
from starlette.types import Scope

from app.api.limits import UPLOAD_TYPES, RouteRules
from app.api.problems import problem_responses
from app.api.streams import SnapshotCache, StreamSlots, read_job_snapshot
from app.config import Settings
from app.jobs.runner import JobRunner
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import SignatureIndex
from app.services.context import ANONYMOUS, Caller, Context
from app.services.models import ModelCache
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


def get_session(state: Annotated[ServiceState, Depends(get_state)]) -> Iterator[Session]:
    """One database session per request: committed when the route returns, rolled back if
    it raises, before the response is sent (so a failed commit is the client's error too)."""
    with state.sessions() as session:
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
# The list routes' responses: a page token the service did not issue is a 400.
PAGE_PROBLEMS = problem_responses(_400="page_token is not one this service issued")
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed by every POST and DELETE, and by GETs that compute on demand, when the "
    "service sets P2L_API_KEYS (by every /v1 route when P2L_OPEN_READS=false too).",
)
ApiKeyHeader = Annotated[str | None, Security(_api_key_header)]


def key_refusal(settings: Settings, api_key: str | None) -> str | None:
    """Why a request offering ``api_key`` is refused (None: a configured key, or auth off)."""
    keys = settings.api_keys
    if not keys:
        return None
    offered = (api_key or "").encode()
    # Compare against every key, without early exit, so timing reveals nothing.
    matches = [hmac.compare_digest(offered, key.encode()) for key in keys]
    if any(matches):
        return None
    return "missing or invalid X-API-Key header" if api_key else "X-API-Key header required"


def require_api_key(state: StateDep, api_key: ApiKeyHeader) -> None:
    """Reject the request unless auth is off or X-API-Key matches a configured key."""
    if (refusal := key_refusal(state.settings, api_key)) is not None:
        raise HTTPException(status_code=401, detail=refusal, headers={"WWW-Authenticate": "ApiKey"})


def require_read_key(state: StateDep, api_key: ApiKeyHeader) -> None:
    """Plain reads need a key only when keys are set and P2L_OPEN_READS is false."""
    if not state.settings.open_reads:
        require_api_key(state, api_key)


def caller_of(api_key: str | None) -> Caller:
    """The caller a request's key names: by a fingerprint, never the key itself."""
    if not api_key:
        return ANONYMOUS
    return Caller("key:" + hashlib.sha256(api_key.encode()).hexdigest()[:12])


def get_context(request: Request, state: StateDep, session: SessionDep) -> Context:
    """The use cases' context for this request (its session, the shared state, the caller).

    The key is read from the request itself, not through ``ApiKeyHeader``: a security
    dependency here would mark every route that takes a Context as needing a key in the
    OpenAPI document, open reads included; whether a key is needed is ``ApiKeyRequired``'s
    and ``ReadAccess``'s to say (they run first and refuse a missing or wrong one).
    """
    return Context(
        session=session,
        store=state.store,
        index=state.index,
        reference=state.reference,
        settings=state.settings,
        caller=caller_of(request.headers.get(_api_key_header.model.name)),
    )


ContextDep = Annotated[Context, Depends(get_context)]


def route_rules(app: FastAPI, settings: Settings) -> RouteRules:
    """What ``RequestLimits`` needs to know of the operation a request reaches, read from
    the OpenAPI document: whether it takes an upload (a multipart or binary body: the upload
    cap; every other body gets the JSON cap, whatever its Content-Type says), and whether
    it needs a key (secured: ``ApiKeyRequired``, or ``ReadAccess`` on a closed service)."""
    operations: list[tuple[re.Pattern[str], str, bool, bool]] = []

    def rules(scope: Scope) -> tuple[bool, str | None]:
        if not operations:  # every route is in place by the first request
            for template, by_method in app.openapi()["paths"].items():
                pattern = compile_path(template)[0]
                for method, operation in by_method.items():
                    content = operation.get("requestBody", {}).get("content", {})
                    upload = any(kind.startswith(UPLOAD_TYPES) for kind in content)
                    secured = bool(settings.api_keys and operation.get("security"))
                    operations.append((pattern, method.upper(), upload, secured))
        path = get_route_path(scope)  # below the root path (a proxy's prefix), as routes see it
        for pattern, method, upload, secured in operations:
            if method == scope["method"] and pattern.match(path):
                refusal = None
                if secured:
                    offered = Headers(scope=scope).get(_api_key_header.model.name)
                    refusal = key_refusal(settings, offered)
                return upload, refusal
        return False, None

    return rules


# Needs a key whenever keys are set: every POST and DELETE, and the GETs that compute on
# demand or hold the server's resources (plots, the zoo map, event streams).
ApiKeyRequired = Depends(require_api_key)
# Every /v1 router: lists, records, weights and signatures.
ReadAccess = Depends(require_read_key)
