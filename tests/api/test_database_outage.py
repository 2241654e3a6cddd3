"""The API while its PostgreSQL goes away and comes back (issue #23, 6): a PostgreSQL of the
test's own, started, stopped and started again on one port, under a service that keeps
running."""

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.helpers import PROBLEM, eventually, upload_garments
from tests.servers import Postgres

pytestmark = pytest.mark.system

# Reads a client makes all the time: each must answer 503 + Retry-After while the
# database is away, and 200 once it is back.
READS = ("/v1/datasets", "/v1/sources", "/v1/jobs", "/v1/models")


def assert_unavailable(response: httpx.Response) -> None:
    """A 503 problem saying the database is unavailable, with Retry-After, and no SQL."""
    assert response.status_code == 503, (response.request.url, response.text)
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) > 0
    detail = response.json()["detail"]
    assert "database is unavailable" in detail
    for sql in ("SELECT", "FROM", "psycopg", "[SQL"):
        assert sql not in detail, detail


def test_reads_answer_503_while_postgres_is_down_and_200_once_it_is_back(
    make_client: Callable[..., TestClient], own_postgres: Postgres
) -> None:
    keyed = make_client(database_url=own_postgres.url, import_bundled_zoo=False, api_keys=["k1"])
    keyed.headers["X-API-Key"] = "k1"
    dataset = upload_garments(keyed, per_class=4)
    made = keyed.post("/v1/projects/default/keys", json={"role": "member", "name": "db-held"})
    held_key = made.json()["key"]
    for path in READS:
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/healthz").status_code == 200

    own_postgres.stop()
    for path in (*READS, f"/v1/datasets/{dataset}"):
        assert_unavailable(keyed.get(path))
    ready = keyed.get("/healthz")
    assert ready.status_code == 503 and ready.json()["database"].startswith("unavailable")
    assert int(ready.headers["retry-after"]) > 0
    # A database away never turns a key into a 401: P2L_API_KEYS keys are checked from the
    # settings, and a key held in the database cannot be told wrong until it is back.
    assert keyed.post("/v1/rankings", json={"target_dataset_id": dataset}).status_code == 503
    held = keyed.get("/v1/datasets", headers={"X-API-Key": held_key})
    assert_unavailable(held)
    keyed.headers.pop("X-API-Key")
    assert keyed.post("/v1/rankings", json={"target_dataset_id": dataset}).status_code == 401
    keyed.headers["X-API-Key"] = "k1"

    own_postgres.start()  # the same port: the service was not restarted
    for path in (*READS, f"/v1/datasets/{dataset}", "/healthz"):
        response = keyed.get(path)
        assert response.status_code == 200, (path, response.text)
    assert keyed.get("/v1/whoami", headers={"X-API-Key": held_key}).json()["role"] == "member"
    assert keyed.get(f"/v1/datasets/{dataset}").json()["id"] == dataset


def test_a_read_whose_connection_is_dropped_mid_query_is_retried_on_a_fresh_one(
    make_client: Callable[..., TestClient], own_postgres: Postgres
) -> None:
    client = make_client(database_url=own_postgres.url, import_bundled_zoo=False)
    assert client.get("/v1/jobs").status_code == 200
    admin = create_engine(own_postgres.url, isolation_level="AUTOCOMMIT")
    answers: list[httpx.Response] = []
    try:
        with admin.connect() as locker, admin.connect() as killer:
            # The read's query waits on this lock, on a connection the pool just checked.
            locker.execute(text("BEGIN"))
            locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            reader = threading.Thread(target=lambda: answers.append(client.get("/v1/jobs")))
            reader.start()
            waiting = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            pid = eventually(lambda: killer.scalar(text(waiting)), 60, "the read waits")
            killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            time.sleep(0.2)  # the read fails over to its retry, which waits on the lock too
            locker.execute(text("COMMIT"))
            reader.join(60)
    finally:
        admin.dispose()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []
