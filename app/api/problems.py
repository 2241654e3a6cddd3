"""RFC 9457 problem+json responses, and the handlers that turn every error into one."""

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError
from app.schemas import Problem

logger = logging.getLogger("p2l")

PROBLEM_JSON = "application/problem+json"


def problem_responses(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting problem+json bodies, e.g. ``_413="Too big"``."""
    return {
        status.lstrip("_"): {"model": Problem, "description": text, "content": {PROBLEM_JSON: {}}}
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
        return problem(exc.status, exc.detail, request.url.path, **exc.extensions)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = problem(exc.status_code, str(exc.detail), request.url.path)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(422, f"invalid request: {summary}", request.url.path, errors=errors)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        detail = f"internal error ({type(exc).__name__}); see the server log"
        return problem(500, detail, request.url.path)


class BodySizeLimit:
    """Refuse request bodies above ``max_bytes`` with a 413 problem, before or while reading.

    A declared Content-Length over the cap is answered at once; a chunked body is counted as
    it streams and cut off at the cap, so an upload never reaches disk beyond it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problem(413, self._detail(), scope["path"])(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)
