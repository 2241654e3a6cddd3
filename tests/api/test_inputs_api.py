"""Issue #23's input defects: zip member names zipfile hides or chokes on, unbounded strings,
unknown fields, a leaked install path, a fine-tune started on a full disk. Each test failed
on the code before the fix."""

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

import app
from app.imaging.archive import ArchiveLimits, extract_image_folder
from app.jobs.service import claim_next_job
from app.jobs.worker import Lease, run_job
from app.models import Job, Ranking
from app.worker import JOB_KINDS
from tests.archives import (
    fashion_mnist_images,
    image_folder_entries,
    zip_bytes,
    zip_with_raw_names,
)
from tests.helpers import PROBLEM, count_rows, model_folders, start_finetune, upload_garments

# --- 8, 9. Zip member names: flagged UTF-8 but not UTF-8; a NUL byte zipfile cuts off ------


# Stored names (bytes, as long as "dress/xx.png") and what each member's rejection says.
NOT_UTF8 = (b"dress/\xff\xfe.png", ("dress/\ufffd\ufffd.png", "invalid_name"))
NUL = (b"dress/y\x00.png", ("dress/y\ufffd.png", "unsafe_path"))  # zipfile: "dress/y"


def hostile_names_zip(*raw_names: bytes) -> bytes:
    """Five garment classes of two images, plus one image per raw name, stored under it
    (flagged UTF-8)."""
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    image = good["dress/0000.png"]
    placeholders = [f"dress/{i:02d}.png" for i in range(len(raw_names))]
    return zip_with_raw_names(
        {**good, **dict.fromkeys(placeholders, image)},
        dict(zip(placeholders, raw_names, strict=True)),
    )


@pytest.mark.unit
@pytest.mark.parametrize("hostile", [NOT_UTF8, NUL], ids=["flagged-utf8-not-utf8", "nul"])
def test_zip_names_zipfile_hides_are_rejected_one_by_one(
    tmp_path: Path, hostile: tuple[bytes, tuple[str, str]]
) -> None:
    raw, rejection = hostile
    # What dataset uploads and evaluations both extract archives with.
    limits = ArchiveLimits(1000, 10**9, 200.0, 10**7, 10**8)
    folder = extract_image_folder(io.BytesIO(hostile_names_zip(raw)), tmp_path, limits)

    classes = ["dress", "pullover", "sneaker", "trouser", "tshirt"]
    assert folder.class_counts == dict.fromkeys(classes, 2)
    assert [(r.path, r.kind) for r in folder.rejected.listed] == [rejection]
    assert sorted(p.name for p in (tmp_path / "dress").iterdir()) == ["0000.png", "0001.png"]


@pytest.mark.api
def test_upload_rejects_zip_members_with_undecodable_or_nul_names(client: TestClient) -> None:
    archive = hostile_names_zip(NOT_UTF8[0], NUL[0])
    response = client.post("/v1/datasets", files={"file": ("d.zip", archive)})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 10 and body["num_classes"] == 5
    assert {(r["path"], r["kind"]) for r in body["rejected"]} == {NOT_UTF8[1], NUL[1]}
    assert body["rejected_counts"] == {"invalid_name": 1, "unsafe_path": 1}


# --- 3, 10. Request bodies: every string and list bounded, unknown fields refused ----------


def request_body_nodes(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(media type, where, schema node) of every node of every request body, refs followed."""
    components = spec["components"]["schemas"]

    def walk(node: Any, where: str, seen: frozenset[str]) -> Iterator[dict[str, Any]]:
        if isinstance(node, list):
            for item in node:
                yield from walk(item, where, seen)
            return
        if not isinstance(node, dict):
            return
        if ref := node.get("$ref"):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                yield from walk(components[name], name, seen | {name})
            return
        yield {"where": where, **node}
        for field, sub in node.get("properties", {}).items():
            yield from walk(sub, f"{where}.{field}", seen)
        for key in ("items", "anyOf", "oneOf", "allOf"):
            yield from walk(node.get(key), where, seen)

    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                for node in walk(content["schema"], f"{method.upper()} {path}", frozenset()):
                    yield media, node.pop("where"), node


@pytest.mark.api
def test_every_string_and_list_of_a_request_body_is_bounded(spec: dict[str, Any]) -> None:
    unbounded = []
    for _, where, node in request_body_nodes(spec):
        upload = node.get("format") == "binary" or "contentMediaType" in node
        bounded = {"maxLength", "enum", "const"} & set(node)
        if node.get("type") == "string" and not upload and not bounded:
            unbounded.append(f"{where} (string)")
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(f"{where} (list)")
    assert unbounded == []


@pytest.mark.api
def test_every_json_request_body_refuses_unknown_fields(spec: dict[str, Any]) -> None:
    open_objects = [
        where
        for media, where, node in request_body_nodes(spec)
        if media == "application/json"
        and node.get("type") == "object"
        and node.get("additionalProperties") is not False
    ]
    assert open_objects == []


@pytest.mark.api
def test_unknown_fields_are_refused_and_change_nothing(client: TestClient, data_dir: Path) -> None:
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=2)))
    dataset = client.post("/v1/datasets", files={"file": ("d.zip", archive)}).json()["id"]

    ranking = client.post(
        "/v1/rankings", json={"target_dataset_id": dataset, "num_images": 1e9, "top_k": 2}
    )
    assert ranking.status_code == 422, ranking.text
    assert ranking.headers["content-type"] == PROBLEM
    assert "num_images" in ranking.json()["detail"]
    nested = client.post(
        "/v1/rankings", json={"target_dataset_id": dataset, "refine": {"method": "nce", "k": 2}}
    )
    assert nested.status_code == 422 and "refine.k" in nested.json()["detail"]
    # Validation comes first: whatever the model, nothing is registered.
    register = client.post(f"/v1/models/{'0' * 32}/register", json={"num_images": 1e9})
    assert register.status_code == 422, register.text
    assert "num_images" in register.json()["detail"]
    assert count_rows(data_dir, Ranking) == 0

    # What the clients send still passes: a name, an empty body, no body at all.
    for body in ({"name": "x"}, {}, None):
        response = client.post(f"/v1/models/{'0' * 32}/register", json=body)
        assert response.status_code == 404, (body, response.text)
    fine = client.post("/v1/rankings", json={"target_dataset_id": dataset, "lambda": 0.1})
    assert fine.status_code == 201, fine.text


@pytest.mark.api
def test_a_long_form_field_is_refused_in_a_short_answer(client: TestClient) -> None:
    huge = "x" * 500_000
    weights = ("w.safetensors", b"not read")
    for field in ("architecture", "dataset_id"):
        form = {"architecture": "compact_cnn", "num_classes": "2", "name": "n"}
        form |= {"dataset_id": "0" * 32, field: huge}
        response = client.post("/v1/sources", data=form, files={"weights": weights})
        assert response.status_code == 422, (field, response.text[:300])
        assert response.headers["content-type"] == PROBLEM
        assert field in response.json()["detail"] and len(response.content) < 2000, field
    named = client.post("/v1/datasets", data={"name": huge}, files={"file": ("d.zip", b"PK")})
    assert named.status_code == 422 and len(named.content) < 2000


# --- 11. GET /v1/reference names the weights file, not where the server keeps it ----------


@pytest.mark.api
def test_reference_does_not_show_the_install_path(client: TestClient, data_dir: Path) -> None:
    response = client.get("/v1/reference")

    assert response.status_code == 200
    assert response.json()["weights_source"] == "file:reference.safetensors"
    install = Path(app.__file__).resolve().parent.parent
    for path in (install, data_dir.resolve()):
        assert str(path) not in response.text


# --- 4. A fine-tune on a full disk is refused before it trains -----------------------------


def more_than_free(data_dir: Path) -> int:
    """A reserve the data dir's disk cannot keep: what a full disk looks like to the check."""
    return shutil.disk_usage(data_dir).free + 2**40


@pytest.mark.api
def test_a_finetune_that_cannot_fit_on_disk_is_refused_at_once(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    client = make_client()
    target = upload_garments(client, per_class=4)
    full = make_client(store_reserve_bytes=more_than_free(data_dir))

    for body in ({"source_id": "best"}, {"source_id": "race", "race": {"top": 2}}):
        response = full.post("/v1/finetunes", json={"target_dataset_id": target, **body})
        assert response.status_code == 507, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["Retry-After"] == "60"
        detail = response.json()["detail"]
        assert "storage is too full" in detail and "P2L_STORE_RESERVE_BYTES" in detail
    assert count_rows(data_dir, Job) == 0 and count_rows(data_dir, Ranking) == 0
    # With room to spare, the same request is queued.
    fine = client.post("/v1/finetunes", json={"target_dataset_id": target, "epochs": 1})
    assert fine.status_code == 202, fine.text


@pytest.mark.api
def test_a_queued_finetune_fails_before_training_once_the_disk_is_full(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    client = make_client()
    state = client.app.state.service
    job_id = start_finetune(client, upload_garments(client, per_class=4), epochs=1)
    # The disk fills while the job waits: the worker's settings see it.
    settings = state.settings.model_copy(update={"store_reserve_bytes": more_than_free(data_dir)})
    with state.sessions() as session:
        job = claim_next_job(session, "worker-full", 60)
    assert job is not None and job.id == job_id
    with Lease(state.sessions, settings, job.id, "worker-full") as lease:
        run_job(JOB_KINDS, state.sessions, state.store, torch.device("cpu"), job, lease)

    ended = client.get(f"/v1/jobs/{job_id}").json()
    assert ended["status"] == "failed", ended
    assert ended["error"].startswith("StorageFull: the server's storage is too full")
    assert "P2L_STORE_RESERVE_BYTES" in ended["error"]
    assert ended["progress"]["epochs_done"] == 0 and ended["progress"]["history"] == []
    assert ended["model_id"] is None and model_folders(data_dir) == set()
