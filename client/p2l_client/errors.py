"""Errors the client raises: one class per kind of problem+json answer (RFC 9457)."""

import json
from collections.abc import Mapping
from typing import Any

import httpx


class P2LError(Exception):
    """An answer of 4xx/5xx from the service, with its problem+json body.

    ``status``, ``title`` and ``detail`` are the problem's; ``problem`` is the whole body, so
    the extra fields a route adds (``rejected``, ``rejected_counts``, ``errors``, ``jobs``,
    ``source_id``...) are there too, and also readable as attributes (``error.rejected``).
    """

    def __init__(
        self, status: int | None, title: str, detail: str, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if status else f"{title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem: dict[str, Any] = problem or {}

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found otherwise: the problem's extension fields.
        problem = self.__dict__.get("problem", {})
        if name in problem:
            return problem[name]
        raise AttributeError(name)

    @property
    def extra(self) -> dict[str, Any]:
        """The problem's fields beyond type, title, status, detail and instance."""
        standard = {"type", "title", "status", "detail", "instance"}
        return {k: v for k, v in self.problem.items() if k not in standard}


class BadRequest(P2LError):
    """400: e.g. a page token the service did not issue."""


class Unauthorized(P2LError):
    """401: no API key, or not one of the service's (P2L_API_KEY / --api-key)."""


class Forbidden(P2LError):
    """403: the key's role may not do this (``role`` and ``required_role`` say why)."""


class NotFound(P2LError):
    """404: an id that names nothing."""


class Conflict(P2LError):
    """409: the request clashes with the current state (e.g. a delete of something in use)."""


class TooLarge(P2LError):
    """413: input above one of the service's size limits."""


class InvalidInput(P2LError):
    """422: a well-formed request whose content cannot be used (see ``rejected``/``errors``)."""


class TooManyRequests(P2LError):
    """429: the key's requests_per_minute_per_key quota is spent (see Retry-After)."""


class ServiceUnavailable(P2LError):
    """503: e.g. too many event streams open, or the database is down."""


class InsufficientStorage(P2LError):
    """507: the service's disk is full; nothing of the request was kept."""


class ServerError(P2LError):
    """Any other 5xx: a bug in the service."""


class P2LConnectionError(P2LError):
    """The service could not be reached (no HTTP answer at all)."""


class JobFailed(P2LError):
    """A job waited for ended failed or cancelled; ``job`` is its final state."""

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> "JobFailed":
        """The error for a job that did not succeed."""
        detail = job.get("error") or f"job {job.get('id')} ended {job.get('status')}"
        return cls(None, f"Job {job.get('status')}", str(detail), {"job": dict(job)})


BY_STATUS: dict[int, type[P2LError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
    429: TooManyRequests,
    503: ServiceUnavailable,
    507: InsufficientStorage,
}


def error_for(response: httpx.Response) -> P2LError:
    """The P2LError for a 4xx/5xx response, its body parsed when it is problem+json."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text[:2000]}
    title = str(body.get("title") or response.reason_phrase or "Error")
    detail = str(body.get("detail") or "")
    status = response.status_code
    cls = BY_STATUS.get(status, ServerError if status >= 500 else P2LError)
    return cls(status, title, detail, body)
