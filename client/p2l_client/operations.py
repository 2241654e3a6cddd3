"""Operations described once, sent by either client.

A resource method builds a ``Call`` (method, path, query, body, uploads, how to read the
answer) or ``Pages`` (a paginated listing); ``Client`` sends it and returns the answer,
``AsyncClient`` returns an awaitable of it. The ``operation`` and ``listing`` decorators do
that binding, so a method written once is a blocking method on ``Client``'s resources and a
coroutine on ``AsyncClient``'s, with the same name, arguments and docstring.
"""

import functools
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Concatenate, Generic, ParamSpec, Self, TypeVar, cast, overload
from urllib.parse import quote

import httpx

T = TypeVar("T")
P = ParamSpec("P")

StrPath = str | os.PathLike[str]
# An upload: a path, (filename, bytes), or (filename, an open binary file).
FileInput = StrPath | tuple[str, bytes] | tuple[str, IO[bytes]]
# A labelled image set: a folder of class folders (zipped by the client) or an archive.
ArchiveInput = StrPath | tuple[str, bytes] | tuple[str, IO[bytes]]
# Where a path template takes the current project (the client's, else its key's).
CURRENT_PROJECT = "{project}"


def segment(value: object) -> str:
    """``value`` as one path segment: an id or a name, spaces, ``?`` and ``#`` escaped (a
    name never holds a ``/``: the service decodes one before routing, so it refuses them)."""
    return quote(str(value), safe="")


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key: the same one goes with every attempt of one call."""
    return uuid.uuid4().hex


def decoded(response: httpx.Response) -> Any:
    """The answer's JSON."""
    return response.json()


def items(response: httpx.Response) -> Any:
    """The ``items`` of a JSON answer."""
    return response.json()["items"]


def content(response: httpx.Response) -> bytes:
    """The answer's bytes (a PNG, an image)."""
    return response.content


def nothing(response: httpx.Response) -> None:
    """No answer to read (204)."""


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart body. ``archive``: a labelled folder (zipped once, then
    re-sent as is on every attempt) or archive; else one file."""

    field: str
    source: FileInput
    archive: bool = False


@dataclass(frozen=True)
class Download:
    """Where a GET's body goes (a file, or a folder: the service's name for it)."""

    destination: StrPath


@dataclass
class Call(Generic[T]):
    """One request and how to read its answer.

    ``idempotency_key``: set on the POSTs the service deduplicates (a fresh uuid4 unless the
    caller gave one): such a POST may be retried. ``progress``: a bar for the upload or the
    download (on ``console``, default stderr; on a terminal only).
    """

    method: str
    path: str
    answer: Callable[[httpx.Response], T] = decoded
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    uploads: list[Upload] = field(default_factory=list)
    idempotency_key: str | None = None
    download: Download | None = None
    progress: bool = False
    console: Any = None

    @property
    def headers(self) -> dict[str, str]:
        """The call's own headers."""
        return {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else {}

    def in_project(self, project: str) -> str:
        """The path, ``{project}`` filled in."""
        return self.path.replace(CURRENT_PROJECT, segment(project))


@dataclass(frozen=True)
class Pages(Generic[T]):
    """A paginated listing: every item of every page, fetched as the iteration needs it."""

    path: str
    page_size: int = 50
    params: dict[str, Any] = field(default_factory=dict)

    def page(self, token: str | None) -> "Call[dict[str, Any]]":
        """The call that fetches one page (the first when ``token`` is None)."""
        query = {"page_size": self.page_size, **self.params}
        if token:
            query["page_token"] = token
        return Call("GET", self.path, params=query)


def needs_project(path: str) -> bool:
    """True when the path waits for the current project."""
    return CURRENT_PROJECT in path


class Attached:
    """A resource: a group of routes that one client (blocking or async) sends."""

    def __init__(self, client: Any) -> None:
        self.client = client


class Sends:
    """Something that sends calls and blocks for the answer (Client and its resources)."""

    def send(self, call: Call[T]) -> T:
        """Send ``call``; its answer."""
        raise NotImplementedError

    def iterate(self, pages: Pages[T]) -> Iterator[T]:
        """Every item of ``pages``."""
        raise NotImplementedError


class AsyncSends:
    """Something that sends calls on asyncio (AsyncClient and its resources)."""

    async def send(self, call: Call[T]) -> T:
        """Send ``call``; its answer."""
        raise NotImplementedError

    def iterate(self, pages: Pages[T]) -> AsyncIterator[T]:
        """Every item of ``pages``."""
        raise NotImplementedError


class Bound:
    """A method that builds what its owner sends: the owner's ``dispatch`` method (named
    by the subclass) sends it, so one definition serves the blocking and the async client."""

    dispatch = ""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build
        functools.update_wrapper(cast(Any, self), build)  # help() shows the method's doc
        # What a caller passes: the method's arguments, less the resource it is bound to.
        signature = inspect.signature(build)
        self.signature = signature.replace(
            parameters=list(signature.parameters.values())[1:],
            return_annotation=inspect.Signature.empty,
        )

    def __get__(self, owner: Sends | AsyncSends | None, cls: type) -> Any:
        if owner is None:
            return self
        build, dispatch = self.build, getattr(owner, self.dispatch)

        @functools.wraps(build)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return dispatch(build(owner, *args, **kwargs))

        bound.__signature__ = self.signature  # type: ignore[attr-defined]
        return bound


class operation(Bound, Generic[P, T]):
    """A method that builds a ``Call``: on a ``Sends`` it returns the answer, on an
    ``AsyncSends`` an awaitable of it."""

    dispatch = "send"

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        super().__init__(build)

    @overload
    def __get__(self, owner: None, cls: type) -> Self: ...
    @overload
    def __get__(self, owner: Sends, cls: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, owner: AsyncSends, cls: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, owner: Sends | AsyncSends | None, cls: type) -> Any:
        return super().__get__(owner, cls)


class listing(Bound, Generic[P, T]):
    """A method that builds ``Pages``: an iterator of the items on a ``Sends``, an async
    iterator on an ``AsyncSends``."""

    dispatch = "iterate"

    def __init__(self, build: Callable[Concatenate[Any, P], Pages[T]]) -> None:
        super().__init__(build)

    @overload
    def __get__(self, owner: None, cls: type) -> Self: ...
    @overload
    def __get__(self, owner: Sends, cls: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, owner: AsyncSends, cls: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, owner: Sends | AsyncSends | None, cls: type) -> Any:
        return super().__get__(owner, cls)
