"""The client through a service restart: retries, Idempotency-Key, reconnecting event streams,
and the async client, against a real service process (uvicorn, its job worker, SQLite).

The restarts are made at chosen moments, not timed: the upload's body restarts the service
while the client is sending it; a proxy between client and service passes the fine-tune's
POST to the service, then restarts the service and drops the answer before the client sees
it (the job exists, the client does not know). Retry-After is checked with a mock transport:
a real service asks for it only after a minute of requests or a full disk.
"""

import asyncio
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from tests.archives import fashion_mnist_images
from tests.servers import ROOT, free_port, local_url, spawn, stop, uvicorn_args, wait_healthy

sys.path.insert(0, str(ROOT / "client"))

from p2l_client import (  # client/ is on sys.path, not installed in this venv
    AsyncClient,
    Client,
    Conflict,
    NotFound,
    P2LConnectionError,
    P2LError,
    ServiceUnavailable,
)
from p2l_client.retry import parse_retry_after


class RestartableService:
    """A service process on a fixed port and data dir that a test can kill and start again."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.url = local_url(self.port)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
        self.env |= {
            "P2L_DATA_DIR": str(work / "data"),
            "PYTHONPATH": str(ROOT),
            "P2L_START_WORKER": "true",
        }
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the service and wait until it answers."""
        self.starts += 1
        log = self.work / f"server-{self.starts}.log"
        args = uvicorn_args(self.port, "--log-level", "warning")
        self.process = spawn(args, self.env, log, cwd=self.work)
        wait_healthy(self.process, self.url, log, timeout=180)

    def restart(self) -> None:
        """Kill the service (no graceful stop: a crash or a lost host), start it again on
        the same port and data dir."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.start()

    def stop(self) -> None:
        """Stop it for good."""
        if self.process is not None:
            stop(self.process)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableService]:
    """A service with its job worker and the bundled zoo; tests may restart it."""
    live = RestartableService(tmp_path_factory.mktemp("resilience"))
    live.start()
    try:
        yield live
    finally:
        live.stop()


class Proxy:
    """A TCP proxy in front of the service that can lose one answer on purpose.

    ``lose_answer_to(marker, then, keep)``: the next request whose bytes contain ``marker``
    goes to the service; when its answer comes back, ``then`` runs (a restart) and the
    client's connection is closed without the answer (or once the part of it up to bytes
    ``keep`` has passed: a stream cut mid-way). ``seen(marker)`` counts the requests that
    reached the service with that marker.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = local_url(self.listener.getsockname()[1])
        self.marker: bytes | None = None
        self.then: Callable[[], None] = lambda: None
        self.keep: bytes | None = None
        self.lost = 0
        self.sent: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_answer_to(
        self, marker: bytes, then: Callable[[], None] = lambda: None, keep: bytes | None = None
    ) -> None:
        with self.lock:
            self.marker, self.then, self.keep = marker, then, keep

    def seen(self, marker: bytes) -> int:
        with self.lock:
            return sum(chunk.count(marker) for chunk in self.sent)

    def idempotency_keys(self, marker: bytes) -> list[str]:
        """The Idempotency-Key of each request with ``marker`` that reached the service."""
        with self.lock:
            heads = [chunk for chunk in self.sent if marker in chunk]
        found = (re.search(rb"(?im)^idempotency-key: *(\S+)\r$", head) for head in heads)
        return [match.group(1).decode() for match in found if match]

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            losing = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, losing), daemon=True).start()
            threading.Thread(
                target=self._down, args=(upstream, client, losing), daemon=True
            ).start()

    def _up(self, client: socket.socket, upstream: socket.socket, losing: threading.Event) -> None:
        """Client to service; arms the loss when the marked request passes."""
        try:
            while chunk := client.recv(65536):
                with self.lock:
                    self.sent.append(chunk)
                    if self.marker is not None and self.marker in chunk:
                        self.marker = None
                        losing.set()
                upstream.sendall(chunk)
        except OSError:
            pass
        _close(client, upstream)

    def _down(
        self, upstream: socket.socket, client: socket.socket, losing: threading.Event
    ) -> None:
        """Service to client; the armed answer is dropped after ``then``."""
        try:
            while chunk := upstream.recv(65536):
                if losing.is_set():
                    if self.keep is not None:
                        client.sendall(chunk)
                        if self.keep not in chunk:
                            continue
                    self.then()
                    self.lost += 1
                    break
                client.sendall(chunk)
        except OSError:
            pass
        _close(client, upstream)


def _close(*sockets: socket.socket) -> None:
    for each in sockets:
        with contextlib.suppress(OSError):  # already closed by the other side
            each.shutdown(socket.SHUT_RDWR)
        each.close()


@pytest.fixture
def proxy(service: RestartableService) -> Iterator[Proxy]:
    front = Proxy(service.port)
    try:
        yield front
    finally:
        front.close()


class RestartingBody(io.BytesIO):
    """An archive that restarts the service when half of it has been sent, the first time.

    Read in small pieces, so the client is mid-body when it happens; ``passes`` counts how
    often it was read from its start (a retry rewinds it).
    """

    def __init__(self, data: bytes, restart: Callable[[], None]) -> None:
        super().__init__(data)
        self.restart = restart
        self.size = len(data)
        self.passes = 0
        self.restarted = False

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() == 0:
            self.passes += 1
        if not self.restarted and self.tell() >= self.size // 2:
            self.restarted = True
            self.restart()
        return super().read(min(8192, self.size if size is None or size < 0 else size))


def garments_zip(per_class: int) -> bytes:
    """A zip of ``<class>/<index>.png``: Fashion-MNIST garments of 5 classes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, items in fashion_mnist_images(per_class).items():
            for i, data in enumerate(items):
                archive.writestr(f"{name}/{i:03d}.png", data)
    return buffer.getvalue()


def ids(items: Iterator[dict]) -> list[str]:
    return [item["id"] for item in items]


@pytest.mark.system
def test_upload_and_finetune_each_survive_a_restart_without_duplicates(
    service: RestartableService, proxy: Proxy
) -> None:
    """The service is killed mid-upload, and again once it has queued the fine-tune but
    before the client has its answer: both calls complete, once each."""
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=120)
    body = RestartingBody(garments_zip(per_class=12), service.restart)
    with Client(proxy.url, retries=6, backoff=0.2) as p2l:
        uploaded = p2l.datasets.upload(
            ("garments.zip", body), name="garments", progress=True, console=console
        )
        assert body.restarted and body.passes == 2  # sent again, whole, to the new service
        assert uploaded["num_images"] == 60 and uploaded["rejected_total"] == 0
        assert "garments.zip" in shown.getvalue()  # the upload bar

        proxy.lose_answer_to(b"POST /v1/finetunes", then=service.restart)
        job = p2l.finetunes.start(uploaded["id"], "best", epochs=1, schedule="manual")
        assert proxy.lost == 1 and proxy.seen(b"POST /v1/finetunes") == 2
        first, again = proxy.idempotency_keys(b"POST /v1/finetunes")
        assert first == again and len(first) == 32  # one uuid4 for both attempts
        final = p2l.jobs.wait(job["id"], progress=False, timeout=300)
        assert final["status"] == "succeeded", final
        assert ids(p2l.datasets.list()) == [uploaded["id"]]
        assert ids(p2l.jobs.list()) == [job["id"]]  # the retry got the first attempt's job
    assert service.starts == 3


@pytest.mark.system
def test_event_stream_reconnects_when_cut(service: RestartableService, proxy: Proxy) -> None:
    """``jobs.events`` follows a job to its end though its stream is cut mid-way (what a
    restart does to it; the fine-tune above was waited for across a restart already)."""
    with Client(proxy.url, retries=6, backoff=0.2) as p2l:
        target = next(iter(p2l.datasets.list()), None)
        target = target or p2l.datasets.upload(("garments.zip", garments_zip(per_class=6)))
        job = p2l.finetunes.start(target["id"], "best", epochs=1, schedule="manual")
        stream = f"GET /v1/jobs/{job['id']}/events".encode()
        proxy.lose_answer_to(stream, keep=b"event: job")
        events = list(p2l.jobs.events(job["id"]))
    names = [event.event for event in events]
    assert proxy.lost == 1 and proxy.seen(stream) == 2
    assert names[0] == "job" and names.count("job") == 2, names  # each stream starts so
    assert names[-1] == "end" and events[-1].data["status"] == "succeeded", events[-1]


@pytest.mark.system
def test_a_lost_answer_is_retried_for_a_get_never_for_a_post_without_a_key(
    service: RestartableService, proxy: Proxy
) -> None:
    with Client(proxy.url, retries=3, backoff=0.1) as p2l:
        proxy.lose_answer_to(b"GET /v1/reference")
        assert p2l.reference()["architecture"]
        assert proxy.lost == 1 and proxy.seen(b"GET /v1/reference") == 2
        # A ranking is stored by each POST that reaches the service: no second attempt.
        proxy.lose_answer_to(b"POST /v1/rankings")
        with pytest.raises(P2LConnectionError, match="not retried") as lost:
            p2l.rankings.create("0" * 32)
        assert proxy.lost == 2 and proxy.seen(b"POST /v1/rankings") == 1
    assert "cannot reach" in str(lost.value)
    with Client(proxy.url) as p2l, pytest.raises(P2LError):  # not weights: refused
        p2l.sources.register(
            ("w.safetensors", b"x"), "compact_cnn", 5, "w", idempotency_key="mine-1"
        )
    assert proxy.idempotency_keys(b"POST /v1/sources") == ["mine-1"]  # the caller's key wins


@pytest.mark.system
def test_async_client_uploads_ranks_and_lists(service: RestartableService, tmp_path: Path) -> None:
    folder = tmp_path / "garments"
    for name, items in fashion_mnist_images(per_class=6).items():
        (folder / name).mkdir(parents=True)
        for i, data in enumerate(items):
            (folder / name / f"{i}.png").write_bytes(data)

    async def flow() -> None:
        async with AsyncClient(service.url) as p2l:
            uploaded = await p2l.datasets.upload(folder, name="async garments")
            ranking, health = await asyncio.gather(
                p2l.rankings.create(uploaded["id"], top_k=3), p2l.health()
            )
            assert health["status"] == "ok"
            assert [r["rank"] for r in ranking["results"]] == [1, 2, 3]
            listed = [s["id"] async for s in p2l.sources.list(page_size=5)]
            assert ranking["results"][0]["source_id"] in listed and len(listed) >= 21
            assert (await p2l.datasets.get(uploaded["id"]))["num_images"] == 30
            # A name with a space, '?' and '#' reaches the service as one path segment.
            with pytest.raises(NotFound) as missing:
                await p2l.datasets.get("no such?name#x")
            assert "no such?name#x" in missing.value.detail

    asyncio.run(flow())


# -- Retry-After and giving up (a mock transport: a real service says 'retry after a minute')


def answers(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[float]]:
    """A transport that answers ``responses`` in turn, and the times it was asked."""
    times: list[float] = []
    pending = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        return pending.pop(0) if len(pending) > 1 else pending[0]

    return httpx.MockTransport(handle), times


@pytest.mark.unit
def test_retry_after_is_waited_and_a_spent_budget_names_its_attempts() -> None:
    busy = httpx.Response(503, headers={"Retry-After": "1"}, json={"detail": "busy"})
    transport, times = answers(busy, httpx.Response(200, json={"status": "ok"}))
    with Client("http://p2l.test", backoff=0.01, transport=transport) as p2l:
        assert p2l.health()["status"] == "ok"
    assert len(times) == 2 and times[1] - times[0] >= 1.0  # Retry-After, not the 0.01 s
    # The async client waits the same, on its own loop.
    busy = httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "slow down"})
    transport, times = answers(busy, httpx.Response(200, json={"status": "ok"}))

    async def health() -> dict:
        async with AsyncClient("http://p2l.test", backoff=0.01, transport=transport) as p2l:
            return dict(await p2l.health())

    assert asyncio.run(health())["status"] == "ok"
    assert len(times) == 2 and times[1] - times[0] >= 1.0
    # Always busy: the last answer's error, saying how hard the client tried.
    transport, times = answers(httpx.Response(503, json={"detail": "busy"}))
    with (
        Client("http://p2l.test", retries=2, backoff=0.01, transport=transport) as p2l,
        pytest.raises(ServiceUnavailable, match=r"busy \(gave up after 3 attempts in"),
    ):
        p2l.health()
    assert len(times) == 3
    transport, times = answers(httpx.Response(503, json={"detail": "busy"}))
    with (
        Client("http://p2l.test", retries=0, transport=transport) as p2l,
        pytest.raises(ServiceUnavailable),
    ):
        p2l.health()
    assert len(times) == 1


@pytest.mark.unit
def test_a_keyed_post_whose_first_attempt_still_runs_comes_back_later() -> None:
    """The service answers 409 + Retry-After while the first attempt's claim is held (or
    until it sees that attempt's process died): a keyed POST waits and asks again."""
    running = httpx.Response(409, headers={"Retry-After": "0"}, json={"detail": "still running"})
    transport, times = answers(running, httpx.Response(201, json={"id": "d"}))
    with Client("http://p2l.test", backoff=0.01, transport=transport) as p2l:
        created = p2l.json("POST", "/v1/datasets", headers={"Idempotency-Key": "k"})
    assert created == {"id": "d"} and len(times) == 2
    # Without a key the 409 is the answer; so is a 409 that does not say when to come back.
    no_later = httpx.Response(409, json={"detail": "in use"})
    for response, headers in ((running, {}), (no_later, {"Idempotency-Key": "k"})):
        transport, times = answers(response, httpx.Response(201, json={"id": "d"}))
        with (
            Client("http://p2l.test", backoff=0.01, transport=transport) as p2l,
            pytest.raises(Conflict),
        ):
            p2l.json("POST", "/v1/datasets", headers=headers)
        assert len(times) == 1


@pytest.mark.unit
def test_parse_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None
