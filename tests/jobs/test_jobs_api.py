"""Fine-tuning jobs end to end: a real worker process, real training, cancel, crash, predict."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load

from app.finetune.search import describe_candidate
from tests.archives import bundled_target_images, image_folder_entries, zip_bytes
from tests.helpers import (
    ACTIVE,
    JOB_TIMEOUT,
    PROBLEM,
    eventually,
    get_job,
    start_job,
    start_with_worker,
    wait_for_job,
    wait_for_training,
)

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs") / "data"


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Iterator[TestClient]:
    client = start_with_worker(data_dir)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def garments() -> dict[str, list[bytes]]:
    """The bundled garments target's test part (never used in training), PNGs by class."""
    return bundled_target_images("fashion", part="test")


@pytest.fixture(scope="module")
def target_id(service: TestClient) -> str:
    """The bundled garments target's training part (50 images per class), uploaded."""
    archive = zip_bytes(image_folder_entries(bundled_target_images("fashion")))
    response = service.post("/v1/datasets", files={"file": ("garments.zip", archive)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_long_job(client: TestClient, target_id: str) -> dict:
    """A job that would train for a long time (1,000 epochs, no early stopping)."""
    return start_job(
        client, target_dataset_id=target_id, source_id="best", schedule="manual",
        epochs=1000, patience=None,
    )  # fmt: skip


def test_best_source_fine_tunes_beats_scratch_and_predicts(
    service: TestClient, target_id: str, garments: dict[str, list[bytes]]
) -> None:
    job = start_job(service, target_dataset_id=target_id, source_id="best", baseline=True)
    assert job["status"] == "queued"
    assert job["params"]["chosen_by"] == "p2l"
    assert job["params"]["source_name"].startswith("fashion")  # a garment source

    # The API keeps answering while the worker trains (how fast is bench/'s business).
    deadline = time.monotonic() + JOB_TIMEOUT
    while (current := get_job(service, job["id"]))["status"] in ACTIVE:
        assert service.get("/v1/reference").status_code == 200
        assert time.monotonic() < deadline, current["progress"]
        time.sleep(0.2)
    assert current["status"] == "succeeded", current

    result = current["result"]
    # The figure to quote comes from the test split, which chose nothing.
    assert result["evaluated_on"] == "test" and result["test_images"] == 50
    assert result["test_accuracy"] > result["baseline"]["test_accuracy"], result
    assert result["baseline"]["transfer_gain_split"] == "test"
    # Which schedule ran and why: the search's rounds and scores, its choice in words.
    search = result["auto_search"]
    assert search["search"] == "halving" and search["budget_epochs_per_candidate"] == 10
    assert [r["epochs"] for r in search["rounds"]] == [3, 6]
    assert [len(r["trials"]) for r in search["rounds"]] == [4, 2] and search["epochs"] == 24
    assert search["chosen"] in [t["candidate"] for t in search["rounds"][-1]["trials"]]
    assert result["schedule"]["chosen_by"] == "auto"
    assert result["schedule"]["reason"] == search["reason"]
    assert search["reason"].startswith(describe_candidate(search["chosen"]))
    assert current["progress"]["history"], "per-epoch metrics are reported"

    model_id = current["model_id"]
    model = service.get(f"/v1/models/{model_id}").json()
    assert model["class_names"] == sorted(garments)
    report = model["report"]
    assert set(report["per_class_accuracy"]) == set(garments)
    assert np.array(report["confusion_matrix"]).sum() == report["test_images"]
    assert report["history"] and "val_accuracy" in report["history"][0]
    weights = load(service.get(f"/v1/models/{model_id}/weights").content)
    assert weights["head.weight"].shape[0] == 5

    files = [
        ("files", (f"{label}-{i}.png", image))
        for label, images in garments.items()
        for i, image in enumerate(images[:10])
    ]
    predictions = service.post(f"/v1/models/{model_id}/predict", files=files).json()
    predicted = [p["top"][0]["label"] for p in predictions["predictions"]]
    truth = [name.split("-")[0] for _, (name, _) in files]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy >= 0.7, accuracy
    assert all(len(p["top"]) == 3 for p in predictions["predictions"])

    registered = service.post(f"/v1/models/{model_id}/register", json={"name": "garments-ft"})
    assert registered.status_code == 201, registered.text
    source = registered.json()
    assert source["origin"] == "finetune" and source["num_images"] == 250
    assert source["class_names"] == sorted(garments)
    ranking = service.post("/v1/rankings", json={"target_dataset_id": target_id}).json()
    nearest = min(ranking["results"], key=lambda r: r["distance"])
    assert nearest["source_id"] == source["id"]  # the zoo grew; its signature is the target's
    assert nearest["distance"] == pytest.approx(0, abs=1e-6)
    assert service.post(f"/v1/models/{model_id}/register", json={}).status_code == 409

    # Cleaning up in order: the model goes, the source registered from it keeps its weights.
    assert service.delete(f"/v1/models/{model_id}").status_code == 204
    assert service.get(f"/v1/models/{model_id}").status_code == 404
    assert service.post(f"/v1/models/{model_id}/predict", files=files).status_code == 404
    assert service.get(f"/v1/sources/{source['id']}/weights").status_code == 200
    finished = service.get(f"/v1/jobs/{job['id']}").json()
    assert finished["attempts"] == 1 and finished["worker_id"]
    assert service.delete(f"/v1/jobs/{job['id']}").status_code == 204


def test_progress_streams_as_server_sent_events(service: TestClient, target_id: str) -> None:
    job = start_job(
        service, target_dataset_id=target_id, source_id="best", schedule="manual", epochs=3
    )
    with service.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line.startswith("event:")]
    assert events[0] == "event: job" and events[-1] == "event: end"
    assert "event: epoch" in events and "event: phase" in events
    assert wait_for_job(service, job["id"], ("succeeded",))["status"] == "succeeded"


def test_cancel_stops_a_running_job(service: TestClient, target_id: str) -> None:
    models_before = service.get("/v1/models").json()["items"]
    job = start_long_job(service, target_id)
    wait_for_training(service, job["id"])
    cancelled = service.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
    final = wait_for_job(service, job["id"])
    assert final["status"] == "cancelled", final
    assert service.get("/v1/models").json()["items"] == models_before
    again = service.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM


def test_killed_worker_job_is_retried_once_then_failed_and_leaves_no_model(
    service: TestClient, target_id: str, data_dir: Path
) -> None:
    models_before = {m["id"] for m in service.get("/v1/models").json()["items"]}
    job = start_long_job(service, target_id)
    running = wait_for_training(service, job["id"])
    worker_pid = service.app.state.service.runner.pid
    assert worker_pid is not None and running["status"] == "running"
    os.kill(worker_pid, signal.SIGKILL)

    # The supervisor re-queues the job (P2L_JOB_MAX_ATTEMPTS=2) and its new worker runs it.
    requeued = eventually(
        lambda: "re-queued" in (j := get_job(service, job["id"]))["progress"]["label"] and j,
        what="re-queued",
    )
    assert requeued["progress"]["label"].startswith(
        "waiting for a worker (re-queued after attempt 1 of 2: the worker process died"
    )
    assert requeued["error"] is None  # it has not failed
    retried = wait_for_training(service, job["id"])
    assert retried["error"] is None  # the current attempt's: none yet
    second_pid = service.app.state.service.runner.pid
    assert second_pid not in (None, worker_pid)
    os.kill(second_pid, signal.SIGKILL)

    failed = wait_for_job(service, job["id"])
    assert failed["status"] == "failed" and "worker process died" in failed["error"]
    assert failed["error"].endswith("(attempt 2 of 2)")
    restarted = start_with_worker(
        data_dir
    )  # a second service over the same data: the job stays terminal
    try:
        assert restarted.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"
        models = {m["id"] for m in restarted.get("/v1/models").json()["items"]}
        assert models == models_before
        on_disk = {p.name for p in (data_dir / "models").iterdir()}
        assert on_disk == models_before
    finally:
        restarted.__exit__(None, None, None)
    # The supervisor replaced the worker: new jobs still run.
    quick = start_job(service, target_dataset_id=target_id, source_id="best", schedule="manual",
                      epochs=1)  # fmt: skip
    assert wait_for_job(service, quick["id"], ("succeeded", "failed"))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"schedule": "manual", "freeze_below": 5}, 422, "layer groups"),
        ({"schedule": "manual", "multipliers": [1.0, 0.5]}, 422, "multipliers"),
        ({"freeze_below": 1}, 422, "schedule 'auto' chooses freeze_below itself"),
        ({"source_id": "nope"}, 404, "no source"),
        ({"target_dataset_id": "nope"}, 404, "no dataset"),
        ({"decay": 2}, 422, "decay"),
    ],
)
def test_bad_finetune_requests_queue_nothing(
    service: TestClient, target_id: str, body: dict, status: int, detail: str
) -> None:
    jobs_before = service.get("/v1/jobs").json()["items"]
    response = service.post("/v1/finetunes", json={"target_dataset_id": target_id, **body})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]
    assert service.get("/v1/jobs").json()["items"] == jobs_before


def test_predict_refuses_bad_files(service: TestClient) -> None:
    models = service.get("/v1/models").json()["items"]
    if not models:
        pytest.skip("needs the model of the first test")
    response = service.post(
        f"/v1/models/{models[0]['id']}/predict", files=[("files", ("x.png", b"not an image"))]
    )
    assert response.status_code == 422
    assert response.json()["rejected"][0]["path"] == "x.png"
    assert (
        service.post("/v1/models/nope/predict", files=[("files", ("x", b"x"))]).status_code == 404
    )
