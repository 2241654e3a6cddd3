"""Issue #9's defects in the API surface: auth, bad numbers, partial state, deletes, event
streams, retries, schema details, 5xx. Each test failed on the code before the fix."""

import base64
import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from sqlalchemy import select, update

from app.api import idempotency
from app.api.idempotency import ABANDONED, RENEW_EVERY, RequestKey, digest_json, idempotent
from app.config import Settings
from app.models import IdempotencyKey, Job, Ranking
from app.schemas import FinetuneRequest
from app.store import LocalArtifactStore
from tests.archives import fashion_mnist_images, image_folder_entries, png_bytes, zip_bytes
from tests.helpers import PROBLEM, count_rows

SOME_ID = "0" * 32


def upload(client: TestClient, images: dict[str, list[bytes]], **headers: str) -> dict:
    archive = zip_bytes(image_folder_entries(images))
    response = client.post("/v1/datasets", files={"file": ("d.zip", archive)}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def dataset_id(client: TestClient) -> str:
    return upload(client, fashion_mnist_images(8))["id"]


# 2. Keys guard every POST and DELETE (predict included) and GETs that compute on demand.


@pytest.mark.api
def test_with_keys_every_v1_route_needs_one(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys="k1")
    paths = client.get("/openapi.json").json()["paths"]
    routes = [(m.upper(), p) for p, ops in paths.items() for m in ops if p.startswith("/v1/")]
    assert ("POST", "/v1/models/{model_id}/predict") in routes
    assert ("GET", "/v1/models/{model_id}/misclassified/{k}") in routes
    for method, path in routes:
        url = path.replace("{", "").replace("}", "").replace("/k", "/0")
        for name in ("dataset_id", "source_id", "model_id", "job_id", "ranking_id"):
            url = url.replace(name, SOME_ID)
        response = client.request(method, url)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/sources", headers={"X-API-Key": "k1"}).status_code == 200
    assert client.get("/v1/nothing-here").status_code == 401  # no hint of which paths exist
    assert client.get("/healthz").status_code == 200


@pytest.mark.api
def test_a_key_list_of_only_separators_refuses_to_start() -> None:
    with pytest.raises(ValidationError, match="holds no key"):
        Settings(_env_file=None, api_keys=" , ")
    environment = {**os.environ, "P2L_API_KEYS": " , "}
    started = subprocess.run(
        [sys.executable, "-c", "from app.config import Settings; Settings()"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode != 0 and "holds no key" in started.stderr


@pytest.mark.api
def test_predict_caps_the_number_and_size_of_files(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_image_bytes=1000, max_predict_files=2)
    small = png_bytes(Image.new("RGB", (4, 4)))
    big = os.urandom(1001)
    url = f"/v1/models/{SOME_ID}/predict"
    too_many = client.post(url, files=[("files", ("a.png", small))] * 3)
    assert too_many.status_code == 413 and "at most 2" in too_many.json()["detail"]
    too_big = client.post(url, files=[("files", ("a.png", small)), ("files", ("b.png", big))])
    assert too_big.status_code == 413 and "file 1 is larger" in too_big.json()["detail"]


# 3. 5xx: ids PostgreSQL cannot hold, forged dates in page tokens, a full disk, keep-alive.


def _token(created_at: str, row_id: str) -> str:
    raw = json.dumps([created_at, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.api
def test_ids_and_page_tokens_the_database_cannot_hold_are_4xx(
    make_client: Callable[..., TestClient], database_url: str | None
) -> None:
    client = make_client(database_url=database_url, import_bundled_zoo=False)
    for noun in ("datasets", "sources", "jobs", "models", "rankings"):
        response = client.get(f"/v1/{noun}/abc%00def")
        assert response.status_code == 404, (noun, response.text)
        assert response.headers["content-type"] == PROBLEM
    ranking = client.post(
        "/v1/rankings", json={"target_dataset_id": "a\u0000b", "source_ids": ["x\u0000"]}
    )
    assert ranking.status_code in (404, 422), ranking.text
    for created_at in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        response = client.get("/v1/datasets", params={"page_token": _token(created_at, SOME_ID)})
        assert response.status_code == 400, (created_at, response.text)
        assert "not a token this service issued" in response.json()["detail"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs as the data dir, or skip where this machine cannot mount one."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point / "data"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def noise_images(classes: int, per_class: int, size: int = 256) -> dict[str, list[bytes]]:
    """Incompressible PNGs (random pixels): ``classes x per_class`` of ~200 KB each."""
    rng = random.Random(0)
    return {
        f"class{c}": [
            png_bytes(Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)))
            for _ in range(per_class)
        ]
        for c in range(classes)
    }


@pytest.mark.api
def test_a_full_disk_answers_507_and_keeps_nothing(
    make_client: Callable[..., TestClient], small_disk: Path
) -> None:
    client = make_client(data_dir=small_disk, import_bundled_zoo=False)
    archive = zip_bytes(image_folder_entries(noise_images(2, 20)))  # ~8 MB > 6 MiB of disk
    response = client.post("/v1/datasets", files={"file": ("big.zip", archive)})
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "storage is full" in response.json()["detail"]
    assert client.get("/v1/datasets").json()["items"] == []
    assert not list((small_disk / "tmp").iterdir())
    assert not (small_disk / "datasets").exists() or not list((small_disk / "datasets").iterdir())
    assert upload(client, fashion_mnist_images(3))["num_images"] == 15  # space is back


class FullDiskStore(LocalArtifactStore):
    """The store seam, for machines that cannot mount a small disk: every publish finds the
    disk full, as a rename onto a full file system can."""

    def publish(self, staging: Path, key: str) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", str(staging))


@pytest.mark.api
def test_a_full_disk_at_the_store_seam_answers_507(client: TestClient, data_dir: Path) -> None:
    client.app.state.service.store = FullDiskStore(data_dir)
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(3)))
    response = client.post("/v1/datasets", files={"file": ("d.zip", archive)})
    assert response.status_code == 507, response.text
    assert response.headers["retry-after"] == "60"
    assert client.get("/v1/datasets").json()["items"] == []
    assert not list((data_dir / "tmp").iterdir())


@pytest.mark.api
def test_a_500_closes_the_connection(client: TestClient, dataset_id: str, data_dir: Path) -> None:
    for signature in (data_dir / "datasets" / dataset_id).glob("signature*"):
        signature.unlink()  # the server's own files broken behind its back
    response = client.get(f"/v1/datasets/{dataset_id}/signature")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["connection"] == "close"


# 6, 7, 8. Fine-tune requests are checked whole, up front; a refusal leaves nothing behind.

BAD_FINETUNES = [
    {"schedule": "manual", "multipliers": [float("nan")] * 5},
    {"schedule": "manual", "multipliers": [-1, 1, 1, 1, 1]},
    {"schedule": "manual", "multipliers": [0, 0, 0, 0, 0]},
    {"schedule": "manual", "multipliers": [1, 1, 1, 1, 0]},  # freezes the new head
    {"seed": 2**70},
    {"weight_decay": 1e308},
    {"base_lr": float("inf")},
    {"schedule": "auto", "decay": 0.1},  # auto would silently ignore it
    {"schedule": "auto", "multipliers": [1, 1, 1, 1, 1]},
    {"schedule": "auto", "val_fraction": 0},
]


@pytest.mark.api
@pytest.mark.parametrize("body", BAD_FINETUNES, ids=lambda b: json.dumps(b)[:40])
def test_bad_finetune_numbers_are_refused_before_queueing(
    client: TestClient, dataset_id: str, data_dir: Path, body: dict
) -> None:
    body = {"target_dataset_id": dataset_id, "source_id": "best", **body}
    response = client.post(  # json.dumps writes NaN and Infinity as a lenient client would
        "/v1/finetunes", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert count_rows(data_dir, Job) == 0
    assert count_rows(data_dir, Ranking) == 0


@pytest.mark.api
def test_infinite_lambda_is_refused(client: TestClient, dataset_id: str) -> None:
    body = f'{{"target_dataset_id": "{dataset_id}", "lambda": Infinity}}'
    response = client.post(
        "/v1/rankings", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text


@pytest.mark.api
def test_classes_too_small_for_the_splits_are_refused_up_front(
    client: TestClient, data_dir: Path
) -> None:
    images = fashion_mnist_images(5)
    images["trouser"] = images["trouser"][:2]
    target = upload(client, images)["id"]
    refused = client.post("/v1/finetunes", json={"target_dataset_id": target})
    assert refused.status_code == 422
    assert "at least 3 images" in refused.json()["detail"]
    assert "'trouser' (2)" in refused.json()["detail"]
    assert count_rows(data_dir, Ranking) == 0
    accepted = client.post("/v1/finetunes", json={"target_dataset_id": target, "test_fraction": 0})
    assert accepted.status_code == 202, accepted.text


@pytest.mark.api
def test_a_refused_best_finetune_leaves_no_ranking(
    client: TestClient, dataset_id: str, data_dir: Path
) -> None:
    response = client.post(
        "/v1/finetunes",
        json={"target_dataset_id": dataset_id, "schedule": "manual", "freeze_below": 99},
    )
    assert response.status_code == 422 and "head (last) cannot be frozen" in response.text
    assert count_rows(data_dir, Ranking) == 0


# 10. What a job uses cannot be deleted under it; jobs and rankings can be deleted.


@pytest.mark.api
def test_deleting_what_a_queued_job_uses_is_a_409(client: TestClient, dataset_id: str) -> None:
    job = client.post("/v1/finetunes", json={"target_dataset_id": dataset_id}).json()
    source_id = job["params"]["source_id"]
    for url in (f"/v1/datasets/{dataset_id}", f"/v1/sources/{source_id}"):
        response = client.delete(url)
        assert response.status_code == 409, url
        assert job["id"] in response.json()["detail"]
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409  # still queued
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    ranking_id = job["params"]["ranking_id"]
    assert client.delete(f"/v1/rankings/{ranking_id}").status_code == 204
    assert client.get(f"/v1/rankings/{ranking_id}").status_code == 404
    assert client.delete(f"/v1/sources/{source_id}").status_code == 204
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204


# 11. Event streams are bounded and end when idle.


@pytest.mark.system
def test_event_streams_are_bounded_and_time_out_when_idle(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_event_streams=2, event_stream_idle_seconds=2)
    target = upload(client, fashion_mnist_images(8))["id"]
    job_id = client.post("/v1/finetunes", json={"target_dataset_id": target}).json()["id"]
    url = f"/v1/jobs/{job_id}/events"
    bodies: list[str] = []

    def listen() -> None:
        bodies.append(client.get(url).text)  # returns once the idle stream times out

    listeners = [threading.Thread(target=listen) for _ in range(2)]
    for listener in listeners:
        listener.start()
    deadline = time.monotonic() + 60  # a hang guard: the two listeners connect
    while client.app.state.service.streams.open < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = client.get(url)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.headers["content-type"] == PROBLEM
    for listener in listeners:
        listener.join(120)  # each returns once its idle stream times out (2 s)
    assert len(bodies) == 2
    assert all("event: job" in b and "event: timeout" in b for b in bodies)
    assert client.app.state.service.streams.open == 0
    assert client.get(url).status_code == 200  # a place is free again


# 12. A retried request with the same Idempotency-Key does not do the work twice.


@pytest.mark.api
def test_idempotency_key_makes_retries_safe(client: TestClient, dataset_id: str) -> None:
    body = {"target_dataset_id": dataset_id, "epochs": 3}
    first = client.post("/v1/finetunes", json=body, headers={"Idempotency-Key": "job-1"})
    again = client.post("/v1/finetunes", json=body, headers={"Idempotency-Key": "job-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(client.get("/v1/jobs").json()["items"]) == 1
    other = client.post(
        "/v1/finetunes", json={**body, "epochs": 4}, headers={"Idempotency-Key": "job-1"}
    )
    assert other.status_code == 422 and "different request" in other.json()["detail"]

    archive = zip_bytes(image_folder_entries(fashion_mnist_images(3)))  # one retried request
    before = len(client.get("/v1/datasets").json()["items"])
    a, b = (
        client.post(
            "/v1/datasets",
            files={"file": ("d.zip", archive)},
            headers={"Idempotency-Key": "upload-1"},
        )
        for _ in range(2)
    )
    assert a.status_code == b.status_code == 201
    assert a.json() == b.json()
    assert len(client.get("/v1/datasets").json()["items"]) == before + 1


@pytest.mark.api
def test_a_refused_request_releases_its_idempotency_key(client: TestClient) -> None:
    body = {"target_dataset_id": SOME_ID}
    headers = {"Idempotency-Key": "retry-me"}
    assert client.post("/v1/finetunes", json=body, headers=headers).status_code == 404
    assert client.post("/v1/finetunes", json=body, headers=headers).status_code == 404


# 13. Schema details.


@pytest.mark.api
def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    response = client.put(f"/v1/datasets/{SOME_ID}")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"DELETE", "GET"}
    assert client.post("/openapi.json").headers["allow"]  # routes outside the schema too


@pytest.mark.api
def test_page_token_is_documented_as_what_it_accepts(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/datasets", "/v1/sources", "/v1/jobs", "/v1/models"):
        parameters = spec["paths"][path]["get"]["parameters"]
        (token,) = [p for p in parameters if p["name"] == "page_token"]
        schema = token["schema"]["anyOf"][0]
        assert schema["pattern"] and schema["maxLength"] <= 512, path
        assert "400" in spec["paths"][path]["get"]["responses"], path


@pytest.mark.api
def test_idempotency_keys_belong_to_one_client(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys="alice,bob")
    target = upload(client, fashion_mnist_images(8), **{"X-API-Key": "alice"})["id"]
    body = {"target_dataset_id": target}

    def post(api_key: str) -> str:
        headers = {"X-API-Key": api_key, "Idempotency-Key": "same-key"}
        response = client.post("/v1/finetunes", json=body, headers=headers)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    alice, bob = post("alice"), post("bob")
    assert alice != bob
    assert post("alice") == alice


@pytest.mark.api
def test_a_key_left_by_a_dead_request_waits_then_is_taken_over(
    client: TestClient, dataset_id: str
) -> None:
    state = client.app.state.service
    body = {"target_dataset_id": dataset_id}
    headers = {"Idempotency-Key": "crashed"}
    digest = digest_json(FinetuneRequest.model_validate(body).model_dump_json(exclude_unset=True))
    with state.sessions() as session:  # what a request killed mid-way leaves behind
        session.add(IdempotencyKey(scope=f"finetunes:{sha256(b'').hexdigest()[:16]}:{'0' * 32}",
                                   key="crashed", request_sha256=digest))  # fmt: skip
        session.commit()
    running = client.post("/v1/finetunes", json=body, headers=headers)
    assert running.status_code == 409 and "still running" in running.json()["detail"]
    # Told when to come back: a client retries this (p2l_client does) rather than give up.
    assert running.headers["retry-after"] == str(int(RENEW_EVERY.total_seconds()))
    with state.sessions() as session:
        session.execute(update(IdempotencyKey).values(created_at=datetime.now(UTC) - ABANDONED))
        session.commit()
    taken = client.post("/v1/finetunes", json=body, headers=headers)
    assert taken.status_code == 202, taken.text
    replayed = client.post("/v1/finetunes", json=body, headers=headers)
    assert replayed.json()["id"] == taken.json()["id"]
    assert len(client.get("/v1/jobs").json()["items"]) == 1


@pytest.mark.api
def test_a_running_requests_claim_is_renewed_so_only_a_dead_ones_is_taken_over(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restarted mid-upload left its claim, and retries were refused for an hour:
    now a claim lives only while its request renews it, and ABANDONED is seconds."""
    assert timedelta(minutes=1) >= ABANDONED
    monkeypatch.setattr(idempotency, "RENEW_EVERY", timedelta(seconds=0.05))
    state = client.app.state.service
    key = RequestKey("renewed", "client")

    def claimed_at() -> datetime:
        with state.sessions() as session:
            return session.scalars(select(IdempotencyKey.created_at)).one()

    with state.sessions() as session, idempotent(state.sessions, session, "r", key, "d"):
        first = claimed_at()
        time.sleep(0.5)  # the work runs: several renewals
        assert claimed_at() > first
    with state.sessions() as session:  # released at the end (nothing was completed)
        assert session.scalars(select(IdempotencyKey)).all() == []


@pytest.mark.system
def test_event_streams_of_unknown_jobs_leave_nothing_behind(client: TestClient) -> None:
    for i in range(300):
        assert client.get(f"/v1/jobs/{i:032x}/events").status_code == 404
        assert client.get(f"/v1/jobs/bogus-{'x' * 1000}-{i}/events").status_code == 404
    assert len(client.app.state.service.job_snapshots) == 0
    assert client.app.state.service.streams.open == 0


@pytest.mark.api
def test_a_retried_source_registration_stores_one_source(
    client: TestClient, dataset_id: str
) -> None:
    bundled = client.get("/v1/sources", params={"page_size": 1}).json()["items"][0]
    weights = client.get(f"/v1/sources/{bundled['id']}/weights").content
    form = {
        "architecture": bundled["architecture"],
        "num_classes": str(bundled["num_classes"]),
        "name": "retried",
        "dataset_id": dataset_id,
    }
    answers = [
        client.post(
            "/v1/sources",
            data=form,
            files={"weights": ("w.safetensors", weights)},
            headers={"Idempotency-Key": "register-1"},
        )
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [201, 201], answers[0].text
    assert answers[0].json()["id"] == answers[1].json()["id"]
    names = [
        s["name"] for s in client.get("/v1/sources", params={"page_size": 200}).json()["items"]
    ]
    assert names.count("retried") == 1
