"""Idempotency-Key: a retried POST returns what the first one created instead of doing it again.

The key is claimed in its own committed transaction before the work starts, so concurrent
retries see each other; a failed request releases its key so that a retry can run.
"""

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Annotated

from fastapi import Header
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Conflict, InvalidInput
from app.models import IdempotencyKey, utcnow

REMEMBERED = timedelta(hours=24)
# A claim older than this belongs to a request that died mid-way: it may be taken over.
ABANDONED = timedelta(minutes=15)
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Any unique string (at most 200 printable ASCII characters). A retry with "
        "the same key and the same request returns the first answer instead of repeating "
        "the work; keys are remembered for 24 hours.",
    ),
]


@dataclass
class Claim:
    """The outcome of claiming a key: ``replay_id`` is set when the work was already done."""

    replay_id: str | None = None
    resource_id: str | None = None


def digest_json(body: str) -> str:
    """Fingerprint of a JSON request body."""
    return hashlib.sha256(body.encode()).hexdigest()


def digest_file(stream: IO[bytes], *extra: str | None) -> str:
    """Fingerprint of an uploaded file and the form fields beside it (rewinds the file)."""
    digest = hashlib.sha256()
    for value in extra:
        digest.update(f"{value!r}\0".encode())
    stream.seek(0)
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


@contextmanager
def idempotent(
    sessions: sessionmaker[Session], scope: str, key: str | None, request_sha256: str
) -> Iterator[Claim]:
    """Run the body once per key: set ``claim.resource_id`` to what it created.

    With ``claim.replay_id`` set, the body must answer with that resource instead.
    """
    claim = Claim()
    if key is None:
        yield claim
        return
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidInput("Idempotency-Key must be 1 to 200 printable ASCII characters")
    claim.replay_id = _claim(sessions, scope, key, request_sha256)
    if claim.replay_id is not None:
        yield claim
        return
    try:
        yield claim
    except BaseException:
        with sessions() as session:
            _release(session, scope, key)
        raise
    with sessions() as session:
        if claim.resource_id is None:
            _release(session, scope, key)
        else:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
                .values(resource_id=claim.resource_id)
            )
            session.commit()


def _claim(
    sessions: sessionmaker[Session], scope: str, key: str, request_sha256: str
) -> str | None:
    """Insert the key; None if this request now owns it, else the id to replay."""
    with sessions() as session:
        now = utcnow()
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - REMEMBERED))
        session.add(IdempotencyKey(scope=scope, key=key, request_sha256=request_sha256))
        try:
            session.commit()
            return None
        except IntegrityError:
            session.rollback()
        existing = session.get(IdempotencyKey, (scope, key))
        if existing is None:  # released between our insert and read: try once more
            return _claim(sessions, scope, key, request_sha256)
        if existing.request_sha256 != request_sha256:
            raise InvalidInput(
                "this Idempotency-Key was used for a different request; use a new key"
            )
        if existing.resource_id is not None:
            return existing.resource_id
        if existing.created_at < now - ABANDONED:
            existing.created_at = now
            session.commit()
            return None
        raise Conflict(
            "a request with this Idempotency-Key is still running; retry in a few seconds"
        )


def _release(session: Session, scope: str, key: str) -> None:
    session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    )
    session.commit()
