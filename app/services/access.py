"""Who is asking, and what they may see: API keys, roles, and the project a request acts in.

Every request is answered for one ``Principal``: a project and a role in it. A key of a
project acts in that project; an operator key (a key with the ``operator`` role, or one
listed in P2L_API_KEYS) acts in the ``default`` project unless the request names another
(``?project=``). With no key anywhere (no P2L_API_KEYS and no live key in the database),
the service is open: every request is an operator of the ``default`` project, as on a
trusted machine.

A request's session is *scoped* to its project (``scope_session``): every ORM query it
runs on an owned table (datasets, sources, rankings, jobs, models, evidence) gets the
project's criterion added, and every new owned row is stamped with the project. So a
route or use case that forgets the project cannot read or write another project's rows:
an id of another project is simply not found (404, no existence leak). Sources are the
one mix: a project sees its own and the shared zoo. Code that must see every project
(the signature index, the workers, the sweeps) opens sessions of its own, unscoped, or
passes ``ALL_PROJECTS`` as an execution option.
"""

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, or_, select, true
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from app.config import Settings
from app.errors import Forbidden, NotFound, Unauthorized
from app.models import (
    DEFAULT_PROJECT_ID,
    DEFAULT_PROJECT_NAME,
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

# The tables whose rows belong to one project (Source: or to the shared zoo).
OWNED_TABLES: tuple[type[Any], ...] = (Dataset, Source, Ranking, Job, FinetunedModel, Evidence)
# Execution option of a query on a scoped session that must see every project.
ALL_PROJECTS = "p2l_all_projects"
_SCOPE = "p2l_project_id"  # session.info key: the project a scoped session is confined to
KEY_PREFIX = "p2l_"
# last_used_at is written at most this often per key: a write per request would be a
# write per poll.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: ``role`` in ``project_id``; ``key_id`` None when the service
    is open (no keys) or the key is one of P2L_API_KEYS (``key_name`` says which)."""

    project_id: str
    project_name: str
    role: Role
    key_id: str | None = None
    key_name: str | None = None
    authenticated: bool = False  # False: an open service, nobody identified
    # The key's own project (an operator acting elsewhere keeps its own): whose per-key
    # quotas (requests per minute, event streams) bind it.
    key_project_id: str = DEFAULT_PROJECT_ID

    @property
    def key_label(self) -> str:
        """What names the key in counters and the audit log: its id, or the fingerprint of a
        P2L_API_KEYS key ('' on an open service)."""
        return self.key_id or self.key_name or ""

    @property
    def is_operator(self) -> bool:
        """Service-wide rights: projects, quotas, the shared zoo, the calibration."""
        return self.role is Role.OPERATOR

    def can(self, role: Role) -> bool:
        """Whether this principal's role includes ``role``."""
        return self.role.level >= role.level

    def require(self, role: Role, action: str) -> None:
        """Forbidden (403) unless the role includes ``role``; ``action`` says what was refused."""
        if not self.can(role):
            raise Forbidden(
                f"this key's role ({self.role.value}) may not {action}; that needs {role.value}",
                role=self.role.value,
                required_role=role.value,
            )


OPEN = Principal(DEFAULT_PROJECT_ID, DEFAULT_PROJECT_NAME, Role.OPERATOR)


def hash_key(key: str) -> str:
    """What is stored of a key: its SHA-256 (keys are random, so one round is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: ``p2l_`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def env_key_name(key: str) -> str:
    """How an operator key of P2L_API_KEYS is named in answers and the audit log: by a
    fingerprint, never the key itself."""
    return "env:" + hash_key(key)[:12]


def keys_required(session: Session, settings: Settings) -> bool:
    """Whether requests need a key: P2L_API_KEYS is set, or a key was ever made. A service
    whose keys have all expired or been revoked stays closed (``python -m app keys create``
    makes a new one); it never falls back to open."""
    if settings.api_keys:
        return True
    return session.scalar(select(ApiKey.id).limit(1)) is not None


# What a project id or name can be (anything else names no project, and never reaches the
# database: a NUL byte is an error to PostgreSQL).
PROJECT_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def find_project(session: Session, id_or_name: str) -> Project | None:
    """The project with this id, or else this name (names cannot look like ids)."""
    if not PROJECT_HANDLE.fullmatch(id_or_name):
        return None
    project = session.get(Project, id_or_name) if len(id_or_name) == 32 else None
    return project or session.scalar(select(Project).where(Project.name == id_or_name))


def authenticate(
    session: Session, settings: Settings, offered: str | None, project: str | None
) -> Principal:
    """The principal a request acts as, from its X-API-Key (``offered``) and ``?project=``.

    Unauthorized (401) for a missing, unknown, revoked or expired key where keys are
    required; NotFound (404) for a project the key may not see (or that does not exist).
    Commits ``last_used_at`` of a database key (at most once a minute per key).
    """
    principal = _principal_of_key(session, settings, offered)
    if project is None or project in (principal.project_id, principal.project_name):
        return principal
    target = find_project(session, project)
    if target is None or not (principal.is_operator or target.id == principal.project_id):
        raise NotFound(f"no project {project[:100]!r}")
    return replace(principal, project_id=target.id, project_name=target.name)


def _principal_of_key(session: Session, settings: Settings, offered: str | None) -> Principal:
    # No query before a P2L_API_KEYS key is told right or wrong: those stay checkable (and
    # a missing key a 401) while the database is away.
    default_name = DEFAULT_PROJECT_NAME  # the default project is never renamed
    if offered:
        # Compared against every configured key without early exit: timing reveals nothing.
        matches = [hmac.compare_digest(offered.encode(), key.encode()) for key in settings.api_keys]
        if any(matches):
            return Principal(
                DEFAULT_PROJECT_ID,
                default_name,
                Role.OPERATOR,
                key_name=env_key_name(offered),
                authenticated=True,
            )
        # Looked up by its hash: equal hashes are what a unique index finds.
        row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == hash_key(offered)))
        now = utcnow()
        if row is not None and row.revoked_at is None:
            if row.expires_at is not None and row.expires_at <= now:
                raise Unauthorized(f"API key {row.id} expired at {row.expires_at.isoformat()}")
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
                row.last_used_at = now
                session.commit()
            return Principal(
                row.project_id,
                _project_name(session, row.project_id),
                Role(row.role),
                row.id,
                row.name,
                authenticated=True,
                key_project_id=row.project_id,
            )
        if keys_required(session, settings):
            raise Unauthorized("missing or invalid X-API-Key header")
    elif keys_required(session, settings):
        raise Unauthorized("X-API-Key header required")
    return Principal(DEFAULT_PROJECT_ID, default_name, Role.OPERATOR)


def _project_name(session: Session, project_id: str) -> str:
    # The row, not its name alone: the key's quotas are read from it next (one query).
    project = session.get(Project, project_id)
    return project.name if project is not None else project_id


def scope_session(session: Session, project_id: str) -> Session:
    """Confine ``session`` to one project (see the module): returns it, for chaining."""
    session.info[_SCOPE] = project_id
    return session


def session_project(session: Session) -> str | None:
    """The project a scoped session is confined to (None: unscoped)."""
    return session.info.get(_SCOPE)


@event.listens_for(Session, "do_orm_execute")
def _add_project_criteria(state: ORMExecuteState) -> None:
    project_id = state.session.info.get(_SCOPE)
    if project_id is None or state.execution_options.get(ALL_PROJECTS):
        return
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_select and (state.is_column_load or state.is_relationship_load):
        return
    # SQLAlchemy's recipe for global criteria: lambdas, so that aliases are covered too
    # and project_id is a bound parameter (the statement stays cached across projects).
    options = [
        with_loader_criteria(table, lambda cls: cls.project_id == project_id, include_aliases=True)
        for table in OWNED_TABLES
        if table is not Source
    ]
    options.append(
        with_loader_criteria(
            Source,
            lambda cls: or_(cls.project_id == project_id, cls.shared == true()),
            include_aliases=True,
        )
    )
    state.statement = state.statement.options(*options)


@event.listens_for(Session, "before_flush")
def _stamp_project(session: Session, flush_context: object, instances: object) -> None:
    # An unscoped session (start-up, tools, tests) writes into the default project.
    project_id = session.info.get(_SCOPE) or DEFAULT_PROJECT_ID
    for row in session.new:
        if isinstance(row, OWNED_TABLES) and getattr(row, "project_id", None) is None:
            row.project_id = project_id


def create_key(
    session: Session,
    project: Project,
    role: Role,
    name: str,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key of ``project`` (flushed; the caller commits) and the key itself, which is
    never stored and cannot be shown again."""
    key = new_key()
    row = ApiKey(
        id=uuid.uuid4().hex,
        project_id=project.id,
        name=name,
        role=role.value,
        key_sha256=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 6],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key
