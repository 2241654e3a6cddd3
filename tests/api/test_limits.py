"""Limits a request meets before its body is read (issue #23): a key from the headers alone, a
JSON body cap apart from the upload cap, a deadline for the whole body, HEAD as GET without
the body, and decode memory that makes a request wait, then answer 503 + Retry-After."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from app.api.streams import StreamSlots
from app.imaging.budget import decode_budget
from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes

pytestmark = pytest.mark.api

MIB = 2**20


@dataclass
class Answer:
    """What the app sent back, and how many body chunks it asked for."""

    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/problem+json", self.headers
        return dict(json.loads(self.body))


def call(
    client: TestClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: list[bytes | float],
    root_path: str = "",
) -> Answer:
    """Call the ASGI app as a server would, feeding the body chunk by chunk (a float in
    ``body``: a pause of that many seconds before the next chunk)."""
    pending = list(body)
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        while pending and isinstance(pending[0], float):
            await anyio.sleep(pending.pop(0))
        if not pending:
            await anyio.sleep(3600)  # a client that sends nothing more
        chunk = pending.pop(0)
        assert isinstance(chunk, bytes)
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Answer(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        read,
    )


def an_archive() -> bytes:
    return zip_bytes(image_folder_entries(fashion_mnist_images(2)))


def test_a_route_that_needs_a_key_refuses_it_before_reading_a_byte_of_the_body(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(api_keys="alpha-key")
    # Defect 2: an anonymous 200 MB JSON body was read whole (+600 MB) before the 401.
    big_json = {"content-type": "application/json", "content-length": str(200 * MIB)}
    refused = call(client, "POST", "/v1/rankings", big_json, [b"x" * MIB] * 200)
    assert refused.status == 401 and refused.chunks_read == 0
    assert refused.problem()["detail"] == "X-API-Key header required"
    assert refused.headers["www-authenticate"] == "ApiKey"
    # ... and an anonymous upload was spooled to disk in full first.
    upload = {"content-type": "multipart/form-data; boundary=x", "x-api-key": "alpha-kez"}
    refused = call(client, "POST", "/v1/datasets", upload, [b"--x\r\n" + b"y" * MIB] * 50)
    assert refused.status == 401 and refused.chunks_read == 0
    assert "invalid" in refused.problem()["detail"]
    # Behind a proxy's prefix (uvicorn --root-path) the same routes need the same key.
    prefixed = {**big_json}
    refused = call(client, "POST", "/p2l/v1/rankings", prefixed, [b"x"], root_path="/p2l")
    assert refused.status == 401 and refused.chunks_read == 0
    # A good key goes through to the route.
    ranked = client.post("/v1/rankings", json={}, headers={"X-API-Key": "alpha-key"})
    assert ranked.status_code == 422


def test_reads_are_refused_from_the_headers_too(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(api_keys="alpha-key")
    assert call(client, "GET", "/v1/datasets", {}, []).status == 401
    assert client.get("/v1/datasets", headers={"X-API-Key": "alpha-key"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # health needs no key


def test_json_bodies_have_a_cap_of_their_own(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_json_bytes=4096)
    archive = an_archive()
    assert len(archive) > 4096
    # Defect 3's bound: a JSON body (a 50 MB string inside a field) stops at the JSON cap.
    response = client.post("/v1/rankings", json={"target_dataset_id": "x" * 10_000})
    assert response.status_code == 413
    assert "P2L_MAX_JSON_BYTES" in response.json()["detail"]
    streamed = call(
        client, "POST", "/v1/rankings", {"content-type": "application/json"}, [b"x" * 3000] * 5
    )
    assert streamed.status == 413 and streamed.chunks_read == 2
    assert streamed.headers["connection"] == "close"
    # The route decides, not the Content-Type the client claims.
    disguised = {"content-type": "multipart/form-data; boundary=x"}
    claimed = call(client, "POST", "/v1/rankings", disguised, [b"x" * 3000] * 5)
    assert claimed.status == 413 and claimed.chunks_read == 2
    # Uploads keep the upload cap.
    created = client.post("/v1/datasets", files={"file": ("d.zip", archive)})
    assert created.status_code == 201, created.text


def test_a_body_that_trickles_in_past_the_deadline_ends_408(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(body_timeout_seconds=0.5)
    json_body = {"content-type": "application/json", "transfer-encoding": "chunked"}
    slow = call(client, "POST", "/v1/rankings", json_body, [b'{"target', 0.3, b"_dat", 0.4, b"a"])
    assert slow.status == 408
    assert "P2L_BODY_TIMEOUT_SECONDS" in slow.problem()["detail"]
    in_time = call(client, "POST", "/v1/rankings", json_body, [b"{", 0.1, b"}"])
    assert in_time.status == 422  # the route got the whole body (and found no dataset id)


def test_head_answers_as_get_without_the_body(client: TestClient) -> None:
    for path in ("/v1/reference", "/v1/datasets", "/healthz"):
        got = client.get(path)
        head = client.head(path)
        assert head.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]
    assert client.head("/v1/finetunes").status_code == 405  # POST only


def test_decoding_waits_for_memory_then_answers_503_and_keeps_nothing(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    client = make_client(decode_wait_seconds=0.3)
    budget = decode_budget()
    with budget.reserve(budget.total_bytes):  # other requests' decodes hold all of it
        busy = client.post("/v1/datasets", files={"file": ("d.zip", an_archive())})
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert "P2L_DECODE_MEMORY_BYTES" in busy.json()["detail"]
    assert client.get("/v1/datasets").json()["items"] == []
    assert not list((data_dir / "datasets").glob("*"))
    created = client.post("/v1/datasets", files={"file": ("d.zip", an_archive())})
    assert created.status_code == 201


def test_one_owner_takes_at_most_its_share_of_stream_slots() -> None:
    slots = StreamSlots(limit=3)
    first = slots.try_acquire("key-a", owner_limit=2)
    second = slots.try_acquire("key-a", owner_limit=2)
    assert first is not None and second is not None
    assert slots.try_acquire("key-a", owner_limit=2) is None  # checked and taken in one step
    third = slots.try_acquire("key-b", owner_limit=2)
    assert third is not None and slots.try_acquire("key-c") is None  # all 3 are open
    first.release()
    first.release()  # twice is harmless
    assert slots.held_by("key-a") == 1 and slots.open == 2
