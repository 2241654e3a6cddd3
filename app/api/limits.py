"""What every request meets before a route reads a byte of its body: a key, a size, a deadline.

Pure ASGI, so it runs before FastAPI parses anything:

- a route that needs a key refuses a missing or wrong one from the headers alone (401): an
  anonymous 200 MB body is never read, an anonymous upload never spooled;
- bodies are capped by what the route takes, not by what the client says it sends: the
  upload routes (multipart) at P2L_MAX_UPLOAD_BYTES, every other at P2L_MAX_JSON_BYTES; a
  declared Content-Length over the cap is answered 413 at once, a chunked body is counted
  as it streams and cut off at the cap;
- the whole body must arrive within P2L_BODY_TIMEOUT_SECONDS (408), so a client that
  trickles its body cannot hold a connection and its buffers for ever;
- HEAD is answered as the GET of the same path, without its body.

The early answers (401, 413, 408) close the connection: the server reads nothing more of it.
"""

import asyncio
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem

# Request body types of the upload routes (in their OpenAPI document): the upload cap.
UPLOAD_TYPES = ("multipart/form-data", "application/octet-stream")

# (the request's scope) -> (whether its route takes an upload, None or the detail of the
# 401 that refuses it).
RouteRules = Callable[[Scope], tuple[bool, str | None]]


class RequestLimits:
    """The limits above, for every HTTP request (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        route_rules: RouteRules,
        max_upload_bytes: int,
        max_json_bytes: int,
        body_timeout_seconds: float,
    ) -> None:
        self.app = app
        self.route_rules = route_rules
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
        is_upload, refusal = self.route_rules(scope)
        if refusal is not None:
            response = problem(401, refusal, scope["path"])
            response.headers["WWW-Authenticate"] = "ApiKey"
            await _closing(response)(scope, receive, send)
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
