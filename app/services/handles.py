"""Names as handles: a dataset, source or model is named by its id or by its name.

A name is unique within its kind and project (the database holds it too: see
``app.models.unique_name_per_project``), so ``p2l rank fashion`` or
``GET /v1/datasets/fashion`` finds one dataset. Creating a second of a kind with a name its
project already holds is refused (409, naming the one that has it), except for the names the
service makes up itself (a dataset named after its file, a fine-tuned model's default name),
which are numbered instead (``fashion-from-tops_9k-2``). A name must work as one path
segment: no ``/``, no control character, not ``.`` or ``..``; and it may not read as an id
(32 lowercase hex digits), which it would shadow.

A project sees its own sources and the shared zoo, so two sources of one name can both be
visible: the project's own wins; two shared ones of other projects are a 409 asking for the
id.
"""

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.models import DEFAULT_PROJECT_ID, NAME_CHARS, Dataset, FinetunedModel, Source
from app.pagination import is_valid_id
from app.services.access import ALL_PROJECTS, session_project

Named = TypeVar("Named", Dataset, Source, FinetunedModel)

# Source handles that mean something else: where a source is chosen (POST /v1/finetunes),
# and in a path (GET /v1/sources/map.png is the zoo's map).
RESERVED_SOURCE_NAMES = ("best", "race", "map.png")
# What a path segment cannot carry (a / is decoded before routing) or a name should not.
_UNUSABLE = re.compile(r"[/\x00-\x1f\x7f]")
# Names looked up in one query (well inside SQLite's and PostgreSQL's parameter limits).
_CHUNK = 500


def find(session: Session, model: type[Named], handle: str, noun: str) -> Named:
    """The row ``handle`` names (an id, else a name) that this session may see; NotFound
    otherwise, Conflict where a name is ambiguous (see the module)."""
    if is_valid_id(handle) and (row := session.get(model, handle)) is not None:
        return row
    # A name of an earlier release may read as an id: looked up as a name, too.
    found = _named(session, model, [handle], noun).get(handle)
    if found is None:
        raise NotFound(f"no {noun} with id or name {handle[:100]!r}")
    return found


def find_id(session: Session, model: type[Named], handle: str, noun: str) -> str:
    """The id of the row ``handle`` names (see ``find``)."""
    return find(session, model, handle, noun).id


def resolve_id(session: Session, model: type[Named], handle: str, noun: str) -> str:
    """An id as given, unread (its use case looks it up, after checking the rest of the
    request); a name, the id of the row it names (see ``find``)."""
    return handle if is_valid_id(handle) else find_id(session, model, handle, noun)


def ids_of(session: Session, model: type[Named], handles: list[str], noun: str) -> list[str]:
    """Each handle's id, in order (ids as given, names looked up together); a name that
    names nothing stays as given, for the caller to report with the rest it does not know."""
    named = _named(session, model, [h for h in handles if not is_valid_id(h)], noun)
    return [row.id if (row := named.get(handle)) is not None else handle for handle in handles]


def _named(
    session: Session, model: type[Named], names: Iterable[str], noun: str
) -> dict[str, Named]:
    """The row each name names, of those this session may see: the project's own, else
    (sources) one of the shared zoo; Conflict where two shared ones of other projects do."""
    # Never sent to the database: a NUL byte is an error to PostgreSQL, and longer names
    # cannot exist.
    wanted = sorted({n for n in names if n and "\x00" not in n and len(n) <= NAME_CHARS})
    own = session_project(session) or DEFAULT_PROJECT_ID
    by_name: dict[str, list[Named]] = {}
    for first in range(0, len(wanted), _CHUNK):
        chunk = session.scalars(
            select(model)
            .where(model.name.in_(wanted[first : first + _CHUNK]))
            .order_by(model.created_at)
        )
        for row in chunk:
            by_name.setdefault(row.name, []).append(row)
    found = {}
    for name, rows in by_name.items():
        mine = [row for row in rows if row.project_id == own]
        # Another project's row is visible only as a shared source (an unscoped session,
        # a tool's, sees every project: it reads the default one's).
        candidates = mine or [row for row in rows if isinstance(row, Source) and row.shared]
        if len(candidates) > 1:
            ids = ", ".join(row.id for row in candidates[:5])
            raise Conflict(
                f"{len(candidates)} {noun}s of the shared zoo are named {name!r} ({ids}): "
                "name it by its id"
            )
        if candidates:
            found[name] = candidates[0]
    return found


def holder(session: Session, model: type[Named], name: str, project_id: str) -> str | None:
    """The id of the row of ``model`` named ``name`` in ``project_id`` (None: the name is
    free there), whatever the session's scope."""
    return session.scalar(
        select(model.id)
        .where(model.project_id == project_id, model.name == name)
        .execution_options(**{ALL_PROJECTS: True})
    )


def unusable_because(model: type[Named], name: str) -> str | None:
    """Why ``name`` cannot be a handle of ``model`` (None: it can)."""
    if is_valid_id(name):
        return "reads as an id (32 lowercase hex digits)"
    if _UNUSABLE.search(name) or name in (".", ".."):
        return "holds a / or a control character, or is . or .. (a name is one path segment)"
    if model is Source and name in RESERVED_SOURCE_NAMES:
        return (
            "is reserved: it means something else as a source handle (source_id of "
            "POST /v1/finetunes, GET /v1/sources/map.png)"
        )
    return None


def check_new_name(
    session: Session, model: type[Named], name: str, noun: str, project_id: str | None = None
) -> None:
    """InvalidInput if ``name`` cannot be a handle, Conflict if its project (default: the
    session's) has a ``noun`` of that name already."""
    if (why := unusable_because(model, name)) is not None:
        raise InvalidInput(f"{noun} name {name!r} {why}; choose another")
    project = project_id or session_project(session) or DEFAULT_PROJECT_ID
    existing = holder(session, model, name, project)
    if existing is not None:
        raise Conflict(
            f"a {noun} named {name!r} exists in this project already ({noun} {existing}): "
            f"choose another name, or delete that {noun} first",
            **{f"{noun}_id": existing},
        )


def numbered_name(session: Session, model: type[Named], name: str, project_id: str) -> str:
    """``name`` made usable (a / or control character becomes -), or the first of
    ``name-2``, ``name-3``, ... free in ``project_id`` (each cut to the column): for names
    the service makes up, which must not refuse a request."""
    name = _UNUSABLE.sub("-", name)[:NAME_CHARS]
    candidate, number = name, 1
    while (
        unusable_because(model, candidate) is not None
        or holder(session, model, candidate, project_id) is not None
    ):
        number += 1
        suffix = f"-{number}"
        candidate = name[: NAME_CHARS - len(suffix)] + suffix
    return candidate


# Commits of a made-up name that concurrent creates keep taking, before giving up.
NUMBERED_COMMIT_ATTEMPTS = 5


def commit_numbered(session: Session, row: Named, wanted: str, project_id: str) -> None:
    """Add ``row`` under ``wanted`` or its first free number, and commit; a name a
    concurrent create took between the numbering and the commit is numbered again (the
    session holds nothing else uncommitted, so a rollback loses only this row's insert)."""
    for attempt in range(1, NUMBERED_COMMIT_ATTEMPTS + 1):
        row.name = numbered_name(session, type(row), wanted, project_id)
        session.add(row)
        try:
            session.commit()
            return
        except IntegrityError as exc:
            session.rollback()
            if not is_name_clash(exc) or attempt == NUMBERED_COMMIT_ATTEMPTS:
                raise


@contextmanager
def name_race_lost(name: str, noun: str) -> Iterator[None]:
    """Conflict, not a 500, when a concurrent create took ``name`` between the check and the
    commit (the unique constraint refused this one; its unit of work undid its files)."""
    try:
        yield
    except IntegrityError as exc:
        if not is_name_clash(exc):
            raise
        raise name_taken_meanwhile(name, noun) from None


def name_taken_meanwhile(name: str, noun: str) -> Conflict:
    """The Conflict of a create whose name a concurrent one took after the check."""
    return Conflict(
        f"a {noun} named {name!r} was created meanwhile in this project: choose another name"
    )


def is_name_clash(exc: IntegrityError) -> bool:
    """Whether the unique (project, name) constraint refused the write."""
    message = str(exc.orig)
    return "_project_name" in message or ".name" in message  # PostgreSQL's, SQLite's
