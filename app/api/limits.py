"""What every request meets before a route reads a byte of its body: a key, a size, a deadline.

Pure ASGI, so it runs before FastAPI parses anything:

- every /v1 request is authenticated from its headers alone (``app.services.access``): a
  missing or wrong key is refused (401), a viewer's write (403), a key past its rate
  (429): an anonymous 200 MB body is never read, an anonymous upload never spooled. The
  principal is left in the request's state for the route;
- bodies are capped by what the route takes, not by what the client says it sends: the
  upload routes (multipart) at P2L_MAX_UPLOAD_BYTES, every other at P2L_MAX_JSON_BYTES; a
  declared Content-Length over the cap is answered 413 at once, a chunked body is counted
  as it streams and cut off at the cap;
- the whole body must arrive within P2L_BODY_TIMEOUT_SECONDS (408), so a client that
  trickles its body cannot hold a connection and its buffers for ever;
- HEAD is answered as the GET of the same path, without its body.

The early answers (401, 403, 404, 413, 408, 429, 503) close the connection: the server
reads nothing more of it.
"""

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem
from app.errors import ServiceError
from app.models import Role
from app.services.access import Principal

# Request body types of the upload routes (in their OpenAPI document): the upload cap.
UPLOAD_TYPES = ("multipart/form-data", "application/octet-stream")


class RouteRule(NamedTuple):
    """What the middlewares know of the operation a request reaches."""

    upload: bool  # it takes an upload (the upload cap; every other body: the JSON cap)
    secured: bool  # it acts for someone: it needs a principal (every /v1 path)
    template: str | None  # its path template, e.g. /v1/datasets/{dataset_id} (None: no route)


# (the request's scope) -> what is known of its operation.
RouteRules = Callable[[Scope], RouteRule]
# (the request's scope) -> its principal and the key's requests per minute (None: no limit);
# raises a ServiceError to answer instead.
Authenticate = Callable[[Scope], Awaitable[tuple[Principal, int | None]]]
PRINCIPAL = "principal"  # the key of a /v1 request's principal in its scope's state
RATE_LIMITED = "rate_limited"  # set in the state of a request refused for its key's rate
READ_METHODS = ("GET", "HEAD", "OPTIONS")


class KeyRates:
    """Requests per key in the last minute, in this process (each API replica counts its
    own): a sliding window of request times per key."""

    WINDOW_SECONDS = 60.0

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, limit: int) -> float | None:
        """None when one more request of ``key`` is within ``limit`` a minute (it is
        counted); else the seconds until it would be."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(key, deque())
            while seen and seen[0] <= now - self.WINDOW_SECONDS:
                seen.popleft()
            if len(seen) >= limit:
                return seen[0] + self.WINDOW_SECONDS - now if seen else self.WINDOW_SECONDS
            seen.append(now)
            if len(self._seen) > 100_000:  # keys not seen for a minute: forget them
                cutoff = now - self.WINDOW_SECONDS
                self._seen = {k: v for k, v in self._seen.items() if v[-1] > cutoff}
            return None


class RequestLimits:
    """The limits above, for every HTTP request (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        route_rules: RouteRules,
        authenticate: Authenticate,
        max_upload_bytes: int,
        max_json_bytes: int,
        body_timeout_seconds: float,
    ) -> None:
        self.app = app
        self.route_rules = route_rules
        self.authenticate = authenticate
        self.rates = KeyRates()
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
            receive, send = _without_body(receive, send)
        rule = self.route_rules(scope)
        is_upload = rule.upload
        if rule.secured:
            refusal = await self._admit(scope)
            if refusal is not None:
                await _closing(refusal)(scope, receive, send)
                return
        headers = Headers(scope=scope)
        cap = self.max_upload_bytes if is_upload else self.max_json_bytes
        too_large = (
            f"request body is larger than the limit of {cap:,} bytes "
            f"({'P2L_MAX_UPLOAD_BYTES' if is_upload else 'P2L_MAX_JSON_BYTES'})"
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await _closing(problem(413, too_large, scope["path"]))(scope, receive, send)
            return
        # No Content-Length (or 0) and no chunked Transfer-Encoding: there is no body.
        has_body = declared not in ("", "0") or "transfer-encoding" in headers
        await self.app(scope, self._bounded(receive, cap, too_large, has_body), send)

    async def _admit(self, scope: Scope) -> Response | None:
        """Authenticate the request and leave its principal in its state; or the answer
        that refuses it."""
        try:
            principal, per_minute = await self.authenticate(scope)
        except ServiceError as exc:
            response = problem(exc.status, exc.detail, scope["path"], **exc.extensions)
            response.headers.update(exc.headers)
            return response
        # Known from here: what it is refused below is refused to someone (the audit log).
        scope.setdefault("state", {})[PRINCIPAL] = principal
        if scope["method"] not in READ_METHODS and not principal.can(Role.MEMBER):
            return problem(
                403,
                f"this key's role ({principal.role.value}) may only read; {scope['method']} "
                "needs member",
                scope["path"],
                role=principal.role.value,
                required_role=Role.MEMBER.value,
            )
        if per_minute is not None:
            wait = self.rates.admit(principal.key_label, per_minute)
            if wait is not None:
                scope["state"][RATE_LIMITED] = True
                response = problem(
                    429,
                    f"this key made {per_minute} requests in the last minute, its quota "
                    "requests_per_minute_per_key",
                    scope["path"],
                    quota="requests_per_minute_per_key",
                    usage=per_minute,
                    limit=per_minute,
                )
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
        return None

    def _bounded(self, receive: Receive, cap: int, too_large: str, has_body: bool) -> Receive:
        """``receive`` that counts the body against ``cap`` and its time against the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_seconds
        received = 0
        body_done = not has_body

        async def bounded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # nothing (more) to wait for: no deadline
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    body_done = True
                    raise HTTPException(
                        408,
                        f"the request body did not arrive within "
                        f"{self.body_timeout_seconds:g} s (P2L_BODY_TIMEOUT_SECONDS)",
                        headers={"Connection": "close"},
                    ) from None
            if message["type"] != "http.request":
                body_done = True
                return message
            received += len(message.get("body", b""))
            if received > cap:
                body_done = True
                raise HTTPException(413, too_large, headers={"Connection": "close"})
            body_done = body_done or not message.get("more_body", False)
            return message

        return bounded_receive


def _closing(response: Response) -> Response:
    """``response`` telling the server to close the connection (its body is left unread)."""
    response.headers["Connection"] = "close"
    return response


def _without_body(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """A GET's ``receive`` and ``send`` for a HEAD: its headers sent, its body dropped, and
    the app told the client is gone once the headers are out (a stream would go on)."""
    finished = False

    async def head_send(message: Message) -> None:
        nonlocal finished
        if message["type"] == "http.response.start":
            await send(message)
        elif message["type"] == "http.response.body" and not finished:
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def head_receive() -> Message:
        if finished:
            return {"type": "http.disconnect"}
        return await receive()

    return head_receive, head_send
