"""Several API replicas over one database rank the same zoo: the index is a cache of it."""

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from app import db
from app.config import Settings
from app.models import Base, Source, ZooChange
from app.p2l.scoring import SignatureIndex
from app.services.sources import catch_up, load_index
from app.store import LocalArtifactStore
from app.zoo import bundled as bundled_module
from app.zoo.bundled import import_bundled_zoo, load_active_reference, manifest
from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.servers import (
    free_port,
    local_url,
    log_tail,
    spawn,
    stop,
    uvicorn_args,
    wait_healthy,
)


def register_copy(http: httpx.Client, dataset_id: str, name: str) -> str:
    """Register a bundled source's weights again, signed by ``dataset_id``; returns its id."""
    bundled = http.get("/v1/sources", params={"page_size": 1}).json()["items"][0]
    weights = http.get(f"/v1/sources/{bundled['id']}/weights").content
    form = {
        "architecture": bundled["architecture"],
        "num_classes": str(bundled["num_classes"]),
        "name": name,
        "dataset_id": dataset_id,
    }
    response = http.post("/v1/sources", data=form, files={"weights": ("w.safetensors", weights)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload(http: httpx.Client) -> str:
    """Upload a small dataset; returns its id."""
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(8)))
    response = http.post("/v1/datasets", files={"file": ("d.zip", archive)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def ranked_ids(http: httpx.Client, dataset_id: str) -> list[str]:
    """The source ids one replica ranks for a target."""
    response = http.post("/v1/rankings", json={"target_dataset_id": dataset_id})
    assert response.status_code == 201, response.text
    return [r["source_id"] for r in response.json()["results"]]


def source_count(http: httpx.Client) -> int:
    """How many sources the zoo holds (all pages)."""
    return len(http.get("/v1/sources", params={"page_size": 200}).json()["items"])


def gauge(http: httpx.Client, name: str) -> int:
    """One gauge's value from /metrics."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return int(float(line.split()[1]))  # prometheus_client writes 3 as 3.0
    raise AssertionError(f"no gauge {name}")


@pytest.fixture
def replicas(postgres_database: str, tmp_path: Path) -> Iterator[list[httpx.Client]]:
    """Two API processes started at the same moment on one fresh PostgreSQL database."""
    env = {
        **os.environ,
        "P2L_DATABASE_URL": postgres_database,
        "P2L_DATA_DIR": str(tmp_path / "data"),
        "P2L_START_WORKER": "false",
    }
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"api{i}.log" for i in range(2)]
    processes = [spawn(uvicorn_args(p), env, log) for p, log in zip(ports, logs, strict=True)]
    clients = [httpx.Client(base_url=local_url(p), timeout=60) for p in ports]
    try:
        for process, port, log in zip(processes, ports, logs, strict=True):
            wait_healthy(process, local_url(port), log, timeout=180)
        yield clients
    finally:
        for client in clients:
            client.close()
        for process in processes:
            stop(process)


@pytest.mark.system
def test_replicas_started_together_import_the_bundled_zoo_once_and_rank_alike(
    replicas: list[httpx.Client],
) -> None:
    api1, api2 = replicas
    bundled = len(manifest()["sources"])  # type: ignore[index]
    # Migrations and the bundled import took turns: one zoo, imported once.
    assert source_count(api1) == source_count(api2) == bundled
    assert gauge(api1, "p2l_rankable_sources") == gauge(api2, "p2l_rankable_sources") == bundled

    dataset_id = upload(api1)
    added = register_copy(api2, dataset_id, "from-replica-2")
    assert added in ranked_ids(api1, dataset_id)  # registered on 2, ranked by 1
    assert gauge(api1, "p2l_rankable_sources") == bundled + 1

    assert api1.delete(f"/v1/sources/{added}").status_code == 204
    assert added not in ranked_ids(api2, dataset_id)  # deleted on 1, gone from 2
    assert gauge(api2, "p2l_rankable_sources") == bundled


@pytest.mark.system
def test_processes_migrating_at_once_all_succeed(postgres_database: str, tmp_path: Path) -> None:
    # Each process imports first, then waits for the same instant: the migrations overlap.
    code = (
        "import sys, time; from app.db import make_engine, migrate; "
        "engine = make_engine(sys.argv[1]); time.sleep(max(0, float(sys.argv[2]) - time.time())); "
        "migrate(engine)"
    )
    at = str(time.time() + 3)
    logs = [tmp_path / f"migrate{i}.log" for i in range(3)]
    processes = [spawn(["-c", code, postgres_database, at], dict(os.environ), log) for log in logs]
    for process in processes:
        process.wait(120)
    assert [p.returncode for p in processes] == [0, 0, 0], [log_tail(log) for log in logs]
    engine = db.make_engine(postgres_database)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.mark.api
def test_concurrent_starts_import_the_bundled_zoo_once(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=postgres_database)
    reference = load_active_reference(settings)
    store = LocalArtifactStore(settings.data_dir)
    engine = db.make_engine(postgres_database)
    db.migrate(engine)
    sessions = db.session_factory(engine)
    real_register = bundled_module.register_source
    first = manifest()["sources"][0]["name"]  # type: ignore[index]

    def slow_register(*args: Any, **kwargs: Any) -> Source:
        # Widen the window between "the zoo is empty" and the first commit to a second.
        time.sleep(1.0 if kwargs.get("name") == first else 0)
        return real_register(*args, **kwargs)

    monkeypatch.setattr(bundled_module, "register_source", slow_register)
    start = threading.Barrier(2)
    imported: list[int] = []
    errors: list[BaseException] = []

    def replica_start() -> None:
        try:
            start.wait(10)
            with sessions() as session:
                index = SignatureIndex(eps=settings.p2l_eps)
                imported.append(import_bundled_zoo(session, store, index, reference))
        except BaseException as exc:  # reported below, with the other thread's outcome
            errors.append(exc)

    threads = [threading.Thread(target=replica_start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with sessions() as session:
        count = session.scalar(select(func.count()).select_from(Source))
    engine.dispose()
    bundled = len(manifest()["sources"])  # type: ignore[index]
    assert errors == []
    assert sorted(imported) == [0, bundled] and count == bundled


@pytest.mark.api
def test_catch_up_applies_adds_and_removes_and_costs_one_query_when_idle(
    client: TestClient,
) -> None:
    state = client.app.state.service  # type: ignore[attr-defined]
    with state.sessions() as session:
        # Another replica's index, loaded now; the changes below go through ``client``.
        replica = load_index(session, state.store, state.reference, state.settings.p2l_eps)
        newest = session.scalar(select(func.max(ZooChange.seq)))
    assert replica.version == newest  # the bundled import's rows are in the index already
    before = len(replica)

    http: Any = client
    dataset_id = upload(http)
    added = register_copy(http, dataset_id, "elsewhere")
    assert added not in replica
    with state.sessions() as session:
        assert catch_up(session, state.store, replica, state.reference) == 1
    assert added in replica and len(replica) == before + 1
    assert replica.signature(added).n == state.index.signature(added).n

    assert client.delete(f"/v1/sources/{added}").status_code == 204
    with state.sessions() as session:
        assert catch_up(session, state.store, replica, state.reference) == 1
    assert added not in replica and len(replica) == before

    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(state.engine, "before_cursor_execute", count)
    try:
        with state.sessions() as session:
            assert catch_up(session, state.store, replica, state.reference) == 0
    finally:
        event.remove(state.engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements  # nothing changed: one indexed query


@pytest.mark.system
def test_uvicorn_workers_rank_the_same_zoo(postgres_database: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "P2L_DATABASE_URL": postgres_database,
        "P2L_DATA_DIR": str(tmp_path / "data"),
        "P2L_START_WORKER": "false",
    }
    port = free_port()
    log = tmp_path / "api.log"
    process = spawn(uvicorn_args(port, "--workers", "2"), env, log)
    url = local_url(port)
    try:
        wait_healthy(process, url, log, timeout=180)
        with httpx.Client(base_url=url, timeout=60) as http:
            dataset_id = upload(http)
            added = register_copy(http, dataset_id, "one-worker")

        def each_ranking_has_it() -> list[bool]:
            # A new connection per request: the kernel hands each to either worker.
            answers = []
            for _ in range(12):
                with httpx.Client(base_url=url, timeout=60) as fresh:
                    answers.append(added in ranked_ids(fresh, dataset_id))
            return answers

        assert all(each_ranking_has_it())
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.delete(f"/v1/sources/{added}").status_code == 204
        assert not any(each_ranking_has_it())
    finally:
        stop(process)
