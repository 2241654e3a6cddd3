"""Request dependencies: settings, database session, artifact store, reference network, auth."""

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs.finetunes import ModelCache
from app.jobs.runner import JobRunner
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import ScoringParams, SignatureIndex
from app.store import LocalArtifactStore


@dataclass
class ServiceState:
    """What the app builds once at start-up and every request shares."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: LocalArtifactStore
    reference: ReferenceNetwork
    index: SignatureIndex
    models: ModelCache = field(default_factory=ModelCache)
    runner: JobRunner | None = None

    def scoring_params(self, lam: float | None = None) -> ScoringParams:
        """The score constants in force (``lam`` overrides lambda for one request)."""
        settings = self.settings
        return ScoringParams(
            lam=settings.p2l_lambda if lam is None else lam,
            eps=settings.p2l_eps,
            emd_gamma=settings.emd_gamma,
        )


def get_state(request: Request) -> ServiceState:
    """The running service's shared state."""
    return request.app.state.service


def get_session(state: Annotated[ServiceState, Depends(get_state)]) -> Iterator[Session]:
    """One database session per request."""
    with state.sessions() as session:
        yield session


StateDep = Annotated[ServiceState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed by state-changing routes when the service sets P2L_API_KEYS.",
)


def require_api_key(
    state: StateDep, api_key: Annotated[str | None, Security(_api_key_header)]
) -> None:
    """Reject the request unless auth is off or X-API-Key matches a configured key."""
    keys = state.settings.api_keys
    if not keys:
        return
    offered = (api_key or "").encode()
    # Compare against every key, without early exit, so timing reveals nothing.
    matches = [hmac.compare_digest(offered, key.encode()) for key in keys]
    if not any(matches):
        raise HTTPException(
            status_code=401,
            detail="missing or invalid X-API-Key header"
            if api_key
            else "X-API-Key header required",
            headers={"WWW-Authenticate": "ApiKey"},
        )


WriteAccess = Depends(require_api_key)
