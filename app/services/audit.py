"""The audit log: every state-changing /v1 request, who made it (a key id, never a key),
in which project, on which object, and how it ended. Recorded by ``app.api.audit``."""

import uuid
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.models import AuditEntry, Role, utcnow
from app.pagination import paginate
from app.services.access import Principal

# Where a route leaves a line for its audit entry (request.state), e.g. what a delete took.
AUDIT_DETAIL = "audit_detail"


def record(
    session: Session,
    principal: Principal,
    action: str,
    object_id: str | None,
    status: int,
    detail: str | None = None,
) -> None:
    """Add and commit one entry."""
    session.add(
        AuditEntry(
            id=uuid.uuid4().hex,
            key_id=principal.key_label or None,
            project_id=principal.project_id,
            action=action[:120],
            object_id=object_id[:64] if object_id else None,
            status=status,
            detail=detail[:300] if detail else None,
        )
    )
    session.commit()


def list_entries(
    session: Session,
    principal: Principal,
    page_size: int,
    page_token: str | None,
    all_projects: bool = False,
) -> tuple[list[AuditEntry], str | None]:
    """Newest first: the principal's project (admins), or every project (operators who ask)."""
    principal.require(Role.ADMIN, "read the audit log")
    if all_projects:
        principal.require(Role.OPERATOR, "read every project's audit log")
        return paginate(session, AuditEntry, page_size, page_token)
    where = AuditEntry.project_id == principal.project_id
    return paginate(session, AuditEntry, page_size, page_token, where=where)


def prune(session: Session, older_than_days: float) -> int:
    """Delete entries older than this many days (0: none); returns how many went."""
    if older_than_days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=older_than_days)
    done = session.execute(delete(AuditEntry).where(AuditEntry.created_at < cutoff))
    session.commit()
    return int(getattr(done, "rowcount", 0) or 0)
