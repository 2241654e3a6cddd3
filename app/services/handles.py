"""Names as handles: a dataset, source or model is named by its id or by its name.

A name is unique within its kind and project (the database holds it too: see
``app.models.unique_name_per_project``), so ``p2l rank fashion`` or
``GET /v1/datasets/fashion`` finds one dataset. Creating a second of a kind with a name its
project already holds is refused (409, naming the one that has it), except for the names the
service makes up itself (a fine-tuned model's default name), which are numbered instead
(``fashion-from-tops_9k-2``). A name that reads as an id (32 lowercase hex digits) is
refused: it would shadow, or be shadowed by, an id.

A project sees its own sources and the shared zoo, so two sources of one name can both be
visible: the project's own wins; two shared ones of other projects are a 409 asking for the
id.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.models import DEFAULT_PROJECT_ID, Dataset, FinetunedModel, Source
from app.pagination import is_valid_id
from app.services.access import ALL_PROJECTS, session_project

Named = TypeVar("Named", Dataset, Source, FinetunedModel)

NAME_CHARS = 200  # the name columns' length
# Source handles that mean something else: where a source is chosen (POST /v1/finetunes),
# and in a path (GET /v1/sources/map.png is the zoo's map).
RESERVED_SOURCE_NAMES = ("best", "race", "map.png")
# How many same-named rows a lookup reads at most to say it is ambiguous.
_AMBIGUOUS_LISTED = 5


def find(session: Session, model: type[Named], handle: str, noun: str) -> Named:
    """The row ``handle`` names (an id, else a name) that this session may see; NotFound
    otherwise, Conflict where a name is ambiguous (see the module)."""
    if is_valid_id(handle):
        row = session.get(model, handle)
        if row is not None:
            return row
    # Never sent to the database: a NUL byte is an error to PostgreSQL, and longer names
    # cannot exist.
    elif handle and "\x00" not in handle and len(handle) <= NAME_CHARS:
        rows = list(
            session.scalars(
                select(model)
                .where(model.name == handle)
                .order_by(model.created_at)
                .limit(_AMBIGUOUS_LISTED)
            )
        )
        own = session_project(session) or DEFAULT_PROJECT_ID
        mine = [row for row in rows if row.project_id == own]
        candidates = mine or rows
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            ids = ", ".join(row.id for row in candidates)
            raise Conflict(
                f"{len(candidates)} {noun}s of the shared zoo are named {handle!r} ({ids}): "
                "name it by its id"
            )
    raise NotFound(f"no {noun} with id or name {handle[:100]!r}")


def find_id(session: Session, model: type[Named], handle: str, noun: str) -> str:
    """The id of the row ``handle`` names (see ``find``)."""
    return find(session, model, handle, noun).id


def resolve_id(session: Session, model: type[Named], handle: str, noun: str) -> str:
    """An id as given, unread (its use case looks it up, after checking the rest of the
    request); a name, the id of the row it names (see ``find``)."""
    return handle if is_valid_id(handle) else find_id(session, model, handle, noun)


def ids_of(session: Session, model: type[Named], handles: list[str], noun: str) -> list[str]:
    """Each handle's id, in order; a handle that names nothing stays as given (for the
    caller to report with the rest it does not know)."""
    ids = []
    for handle in handles:
        try:
            ids.append(resolve_id(session, model, handle, noun))
        except NotFound:
            ids.append(handle)
    return ids


def holder(session: Session, model: type[Named], name: str, project_id: str) -> str | None:
    """The id of the row of ``model`` named ``name`` in ``project_id`` (None: the name is
    free there), whatever the session's scope."""
    return session.scalar(
        select(model.id)
        .where(model.project_id == project_id, model.name == name)
        .execution_options(**{ALL_PROJECTS: True})
    )


def check_new_name(
    session: Session, model: type[Named], name: str, noun: str, project_id: str | None = None
) -> None:
    """InvalidInput if ``name`` cannot be a handle, Conflict if its project (default: the
    session's) has a ``noun`` of that name already."""
    if is_valid_id(name):
        raise InvalidInput(
            f"{noun} name {name!r} reads as an id (32 lowercase hex digits); choose another"
        )
    if model is Source and name in RESERVED_SOURCE_NAMES:
        raise InvalidInput(
            f"source name {name!r} is reserved: it means something else as a source handle "
            "(source_id of POST /v1/finetunes, GET /v1/sources/map.png); choose another"
        )
    project = project_id or session_project(session) or DEFAULT_PROJECT_ID
    existing = holder(session, model, name, project)
    if existing is not None:
        raise Conflict(
            f"a {noun} named {name!r} exists in this project already ({noun} {existing}): "
            f"choose another name, or delete that {noun} first",
            **{f"{noun}_id": existing},
        )


def numbered_name(session: Session, model: type[Named], name: str, project_id: str) -> str:
    """``name``, or the first of ``name-2``, ``name-3``, ... free in ``project_id`` (each
    cut to the column): for names the service makes up, which must not refuse a request."""
    name = name[:NAME_CHARS]
    if is_valid_id(name):
        name = name[: NAME_CHARS - 2] + "-1"
    candidate, number = name, 1
    while holder(session, model, candidate, project_id) is not None:
        number += 1
        suffix = f"-{number}"
        candidate = name[: NAME_CHARS - len(suffix)] + suffix
    return candidate


@contextmanager
def name_race_lost(name: str, noun: str) -> Iterator[None]:
    """Conflict, not a 500, when a concurrent create took ``name`` between the check and the
    commit (the unique constraint refused this one; its unit of work undid its files)."""
    try:
        yield
    except IntegrityError as exc:
        if "name" not in str(exc.orig):
            raise
        raise Conflict(
            f"a {noun} named {name!r} was created meanwhile in this project: choose another name"
        ) from None
