"""RFC 9457 problem+json responses, and the handlers that turn every error into one."""

import errno
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE, is_transient
from app.errors import ServiceError
from app.schemas import Problem

logger = logging.getLogger("p2l")

PROBLEM_JSON = "application/problem+json"

# Set in a request's scope when its database connection was dropped under it: a read is
# then tried once more (RetryDroppedReads), on a fresh connection.
DROPPED_CONNECTION = "p2l.dropped_connection"


# ``model`` puts Problem in the document; the problem+json body says it is that schema, so
# that client generators (which read the first JSON media type) parse errors into it.
_PROBLEM_BODY = {"schema": {"$ref": "#/components/schemas/Problem"}}


def problem_responses(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting problem+json bodies, e.g. ``_413="Too big"``."""
    return {
        status.lstrip("_"): {
            "model": Problem,
            "description": text,
            "content": {PROBLEM_JSON: dict(_PROBLEM_BODY)},
        }
        for status, text in descriptions.items()
    }


# Every route may answer these; routes add their specific statuses.
DEFAULT_PROBLEMS = problem_responses(
    _4XX="Client error (problem+json)", _5XX="Server error (problem+json)"
)


def problem(status: int, detail: str, instance: str, **extensions: Any) -> JSONResponse:
    """An RFC 9457 problem+json response."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extensions,
    }
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON)


def add_problem_handlers(app: FastAPI) -> None:
    """Render domain errors, HTTP errors, validation errors and crashes as problem+json."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        response = problem(exc.status, exc.detail, request.url.path, **exc.extensions)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = problem(exc.status_code, str(exc.detail), request.url.path)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first matching route only; add the others.
            named = {m.strip() for m in (exc.headers or {}).get("Allow", "").split(",")}
            methods = (named | _allowed_methods(app, request.url.path)) - {""}
            response.headers["Allow"] = ", ".join(sorted(methods))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()[:20]
        ]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(422, f"invalid request: {summary}"[:2000], request.url.path, errors=errors)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _storage_full(request, exc)
        if exc.errno == errno.ENAMETOOLONG:
            return problem(422, "a name in the request is too long to store", request.url.path)
        return await unexpected_error(request, exc)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if "disk is full" in str(exc.orig) or "No space left" in str(exc.orig):
            return _storage_full(request, exc)
        if isinstance(exc, DataError):  # a value the database cannot hold (PostgreSQL)
            return problem(422, "a value in the request cannot be stored", request.url.path)
        if is_transient(exc):  # connection dropped or refused: the database, not the request
            return _database_unavailable(request, exc)
        return await unexpected_error(request, exc)  # its detail names the type, never SQL

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        detail = f"internal error ({type(exc).__name__}); see the server log"
        response = problem(500, detail, request.url.path)
        # The server may be in a bad state for this connection: make the client reconnect.
        response.headers["Connection"] = "close"
        return response


def _storage_full(request: Request, exc: Exception) -> JSONResponse:
    logger.error("storage full on %s %s: %s", request.method, request.url.path, exc)
    response = problem(
        507,
        "the server's storage is full; nothing of this request was kept. Free space or "
        "delete datasets, models or sources, then retry",
        request.url.path,
    )
    response.headers["Retry-After"] = "60"
    return response


def _database_unavailable(request: Request, exc: DBAPIError) -> JSONResponse:
    """503 + Retry-After: the database could not be reached (the raw error is logged)."""
    if exc.connection_invalidated:
        request.scope[DROPPED_CONNECTION] = True
    logger.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, exc.orig or exc
    )
    response = problem(503, f"{DATABASE_UNAVAILABLE}; retry in a few seconds", request.url.path)
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


class RetryDroppedReads:
    """Try a GET or HEAD once more when its database connection was dropped under it.

    The pool's pre-ping replaces connections that died while idle; one that dies while a
    request uses it (a database restart, a terminated backend) fails that request. A read
    has no effect, so its first answer (the 503 of ``_database_unavailable``) is dropped
    and the request runs again on a fresh connection; the second answer is final.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return

        async def unless_dropped(message: Message) -> None:
            if not scope.get(DROPPED_CONNECTION):  # else: the retry answers instead
                await send(message)

        await self.app(scope, receive, unless_dropped)
        if scope.pop(DROPPED_CONNECTION, False):
            logger.warning("retrying %s %s on a fresh connection", scope["method"], scope["path"])
            await self.app(scope, receive, send)
            scope.pop(DROPPED_CONNECTION, None)


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method the API documents at this path."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            methods |= {method.upper() for method in operations}
    return methods
