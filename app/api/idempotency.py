"""Idempotency-Key: a retried POST returns what the first one created instead of doing it again.

The key is claimed in its own committed transaction before the work starts, so concurrent
retries see each other; the resource it created is recorded in the request's own
transaction (for a fine-tune, the same commit as the job), and a failed request releases
its key so that a retry can run. Keys belong to one route and one API key.

While the work runs, its claim is renewed every ``RENEW_EVERY``: a claim left unrenewed for
``ABANDONED`` belongs to a request whose process died (a server restarted mid-upload), and a
retry takes it over. Until then a retry is told to come back (409 with Retry-After).
"""

import hashlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Annotated

from fastapi import Depends, Header
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db import rows_matched
from app.errors import Conflict, InvalidInput
from app.models import IdempotencyKey, utcnow
from app.services.access import session_project

logger = logging.getLogger("p2l.idempotency")

REMEMBERED = timedelta(hours=24)
# A running request renews its claim this often; a claim not renewed for ABANDONED belongs to
# a request that died mid-way (several renewals missed: not one slow commit), and a retry may
# take it over.
RENEW_EVERY = timedelta(seconds=5)
ABANDONED = timedelta(seconds=30)
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(frozen=True)
class RequestKey:
    """A client's Idempotency-Key, and which client sent it (a digest of its API key)."""

    key: str
    client: str


def request_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Any unique string (at most 200 printable ASCII characters). A retry "
            "with the same key and the same request returns the first answer instead of "
            "repeating the work; keys are remembered for 24 hours.",
        ),
    ] = None,
    api_key: Annotated[str | None, Header(alias="X-API-Key", include_in_schema=False)] = None,
) -> RequestKey | None:
    """The request's Idempotency-Key, if it sent one (422 if it is malformed)."""
    if idempotency_key is None:
        return None
    if not KEY_PATTERN.fullmatch(idempotency_key):
        raise InvalidInput("Idempotency-Key must be 1 to 200 printable ASCII characters")
    client = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    return RequestKey(idempotency_key, client)


IdempotencyHeader = Annotated[RequestKey | None, Depends(request_key)]


@dataclass
class Claim:
    """The outcome of claiming a key: ``replay_id`` is set when the work was already done."""

    session: Session
    replay_id: str | None = None
    scope: str = ""
    key: str = ""
    completed: bool = False

    def complete(self, resource_id: str) -> None:
        """Record what the work created, in the request's transaction."""
        if self.key:
            self.session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.scope == self.scope, IdempotencyKey.key == self.key)
                .values(resource_id=resource_id)
            )
        self.completed = True


def digest_json(body: str) -> str:
    """Fingerprint of a JSON request body."""
    return hashlib.sha256(body.encode()).hexdigest()


def digest_files(streams: Sequence[IO[bytes]], *fields: object) -> str:
    """Fingerprint of uploaded files and the form fields beside them (rewinds the files)."""
    digest = hashlib.sha256()
    for value in fields:
        digest.update(f"{value!r}\0".encode())
    for stream in streams:
        stream.seek(0)
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
        stream.seek(0)
        digest.update(b"\0")
    return digest.hexdigest()


@contextmanager
def idempotent(
    sessions: sessionmaker[Session],
    session: Session,
    route: str,
    key: RequestKey | None,
    request_sha256: str,
) -> Iterator[Claim]:
    """Run the body once per key; it calls ``claim.complete`` with what it created.

    With ``claim.replay_id`` set, the body must answer with that resource instead. The
    request ``session`` is committed at the end, so the work's rows (when the body leaves
    them to it) and the key's record land together.
    """
    if key is None:
        yield Claim(session)
        return
    # Per route, key and project: an operator key acting in two projects keeps two.
    scope = f"{route}:{key.client}:{session_project(session) or ''}"
    claim = Claim(session, scope=scope, key=key.key)
    claim.replay_id = _claim(sessions, scope, key.key, request_sha256)
    if claim.replay_id is not None:
        yield claim
        return
    renewal = _Renewal(sessions, scope, key.key)
    try:
        yield claim
        session.commit()
    except BaseException:
        session.rollback()
        _release(sessions, scope, key.key)
        raise
    finally:
        renewal.stop()
    if not claim.completed:
        _release(sessions, scope, key.key)


class _Renewal:
    """Renews a claim (its ``created_at``) every RENEW_EVERY until stopped, in a thread of its
    own: the work holds the request's thread for as long as it runs."""

    def __init__(self, sessions: sessionmaker[Session], scope: str, key: str) -> None:
        self.sessions, self.scope, self.key = sessions, scope, key
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="idempotency-renewal", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopped.wait(RENEW_EVERY.total_seconds()):
            try:
                with self.sessions() as session:
                    session.execute(
                        update(IdempotencyKey)
                        .where(
                            IdempotencyKey.scope == self.scope,
                            IdempotencyKey.key == self.key,
                            IdempotencyKey.resource_id.is_(None),
                        )
                        .values(created_at=utcnow())
                    )
                    session.commit()
            except Exception:  # a busy or unreachable database: the next renewal tries again
                logger.warning("idempotency key %s: claim not renewed", self.key, exc_info=True)


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
        if existing.created_at < now - ABANDONED and _take_over(session, existing, now):
            return None
        conflict = Conflict(
            "a request with this Idempotency-Key is still running; retry after Retry-After "
            "seconds (its answer is then replayed, or, if the request died, the retry runs it)"
        )
        conflict.headers["Retry-After"] = str(int(RENEW_EVERY.total_seconds()))
        raise conflict


def _take_over(session: Session, existing: IdempotencyKey, now: datetime) -> bool:
    """Claim an abandoned key; only one of several concurrent retries succeeds."""
    taken = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.scope == existing.scope,
            IdempotencyKey.key == existing.key,
            IdempotencyKey.created_at == existing.created_at,
            IdempotencyKey.resource_id.is_(None),
        )
        .values(created_at=now)
    )
    session.commit()
    return rows_matched(taken) == 1


def _release(sessions: sessionmaker[Session], scope: str, key: str) -> None:
    with sessions() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.scope == scope,
                IdempotencyKey.key == key,
                IdempotencyKey.resource_id.is_(None),
            )
        )
        session.commit()
