"""Shared queries: lookup by id (or NotFound), and keyset pagination over (created_at, id),
newest first, with opaque page tokens."""

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, defer

from app.errors import NotFound, ServiceError

Row = TypeVar("Row")


class InvalidPageToken(ServiceError):
    """A page token this service did not issue."""

    title = "Invalid page token"


# Every id this service issues: 32 lowercase hex digits (uuid4().hex).
ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def is_valid_id(row_id: str) -> bool:
    """True when ``row_id`` could be an id this service issued."""
    return ID_PATTERN.fullmatch(row_id) is not None


def get_by_id(
    session: Session, model: type[Row], row_id: str, noun: str, for_update: bool = False
) -> Row:
    """The row of ``model`` with this id; NotFound names the ``noun`` otherwise.

    ``for_update`` locks the row until the transaction ends (PostgreSQL; SQLite serialises
    writers on its own), so a check and the write it guards see the same state.
    """
    # Checked before the query: some strings (a NUL byte) are errors to PostgreSQL.
    valid = is_valid_id(row_id)
    row = session.get(model, row_id, with_for_update=for_update) if valid else None
    if row is None:
        raise NotFound(f"no {noun} with id {row_id[:100]!r}")
    return row


def paginate(
    session: Session,
    model: Any,
    page_size: int,
    page_token: str | None,
    skip_columns: tuple[Any, ...] = (),
    where: Any = None,
) -> tuple[list[Any], str | None]:
    """One page of ``model``'s rows (those matching ``where``, if given) and the token of
    the next page (None on the last); ``skip_columns`` (large ones the page does not show)
    are not loaded."""
    query: Select[Any] = select(model).options(*(defer(column) for column in skip_columns))
    if where is not None:
        query = query.where(where)
    if page_token:
        created_at, row_id = _decode(page_token)
        query = query.where(
            or_(
                model.created_at < created_at,
                and_(model.created_at == created_at, model.id < row_id),
            )
        )
    rows = list(
        session.scalars(
            query.order_by(model.created_at.desc(), model.id.desc()).limit(page_size + 1)
        )
    )
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], _encode(last.created_at, last.id)


def _encode(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[datetime, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        created_at, row_id = json.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not is_valid_id(row_id):
            raise ValueError("not issued here")
        # Normalised here so an out-of-range date fails now, not in the database driver.
        return moment.astimezone(UTC), row_id
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidPageToken(
            f"page_token {token[:100]!r} is not a token this service issued"
        ) from exc
