"""Records every state-changing /v1 request in the audit log (``app.services.audit``).

Pure ASGI, outside ``RequestLimits``: it sees the principal that ``RequestLimits`` left in
the request's state, and the status of whatever answered (a route, a 403 of a viewer, a
413, a quota's 429). Requests refused for their key (401) name nobody and are not
recorded, nor are those of a key past its request rate. The entry is
written once the response is sent; its object is the id a create answered with (201,
202), else the route's last ``{..._id}`` path parameter.
"""

import json
import logging
from collections.abc import Callable

import anyio
from sqlalchemy.orm import Session
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.limits import PRINCIPAL, RATE_LIMITED, READ_METHODS, RouteRules
from app.db import user_error_text
from app.services import audit
from app.services.access import Principal

logger = logging.getLogger("p2l")
CAPTURE_BYTES = 64 * 1024  # of a create's answer, enough for its id


class AuditLog:
    """See the module."""

    def __init__(
        self, app: ASGIApp, *, sessions: Callable[[], Session], route_rules: RouteRules
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.route_rules = route_rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in READ_METHODS
            or not get_route_path(scope).startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with the layers below
        status = 500
        captured = bytearray()
        is_json = False

        async def audited_send(message: Message) -> None:
            nonlocal status, is_json
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
            elif (
                message["type"] == "http.response.body"
                and is_json
                and len(captured) < CAPTURE_BYTES
            ):
                captured.extend(message.get("body", b"")[:CAPTURE_BYTES])
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        finally:
            principal = state.get(PRINCIPAL)
            # A key past its rate is not recorded: a flood of them would be a flood of writes.
            if isinstance(principal, Principal) and not state.get(RATE_LIMITED):
                await anyio.to_thread.run_sync(
                    self._record, scope, principal, status, bytes(captured)
                )

    def _record(self, scope: Scope, principal: Principal, status: int, body: bytes) -> None:
        template = self.route_rules(scope).template or get_route_path(scope)[:100]
        object_id = None
        if status in (201, 202) and body:
            try:
                answer = json.loads(body)
                object_id = answer.get("id") if isinstance(answer, dict) else None
            except ValueError:
                pass
        if object_id is None:
            path = get_route_path(scope).split("/")
            params = [
                path[i]
                for i, part in enumerate(template.split("/"))
                if part.startswith("{") and part.endswith("_id}") and i < len(path)
            ]
            object_id = params[-1] if params else None
        detail = scope.get("state", {}).get(audit.AUDIT_DETAIL)
        try:
            with self.sessions() as session:
                audit.record(
                    session,
                    principal,
                    f"{scope['method']} {template}",
                    str(object_id) if object_id is not None else None,
                    status,
                    detail,
                )
        except Exception as exc:  # the answer is sent: say what was not recorded
            logger.error(
                "audit: %s %s (status %d) not recorded: %s",
                scope["method"], template, status, user_error_text(exc),
            )  # fmt: skip
