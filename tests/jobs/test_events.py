"""Job event streams worth streaming: few small events, phases in words, a final progress."""

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.finetune.options import FinetuneOptions
from app.finetune.search import trial_epochs
from app.main import create_app
from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.helpers import (
    eventually,
    get_job,
    start_job,
    wait_for_job,
)

pytestmark = pytest.mark.system

PHASES = {
    "queued", "loading", "auto_search", "fine_tune", "baseline", "evaluating", "saving",
    "done", "failed", "cancelled",
}  # fmt: skip


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("events") / "data"
    settings = Settings(_env_file=None, data_dir=data_dir, start_worker=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def target_id(service: TestClient) -> str:
    """A small garments dataset (20 images per class), uploaded."""
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=20)))
    response = service.post("/v1/datasets", files={"file": ("garments.zip", archive)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def read_events(client: TestClient, job_id: str) -> list[tuple[str, dict, int]]:
    """Every event of the job's stream until it closes: (name, data, size of its data)."""
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                raw = line[len("data: ") :]
                assert name is not None
                events.append((name, json.loads(raw), len(raw)))
    return events


def test_a_jobs_stream_has_few_small_events_in_words_and_a_final_progress(
    service: TestClient, target_id: str
) -> None:
    job = start_job(
        service, target_dataset_id=target_id, source_id="best", schedule="manual", epochs=8,
        patience=None, baseline=True,
    )  # fmt: skip
    events = read_events(service, job["id"])
    names = [name for name, _, _ in events]
    assert names[0] == "job" and names[-1] == "end", names
    assert names.count("job") == 1 and names.count("end") == 1
    assert set(names) <= {"job", "status", "phase", "epoch", "step", "end"}, names
    final = events[-1][1]
    assert final["status"] == "succeeded", final["error"]
    whole = events[-1][2]
    # Not the whole job every tick: few events, each far smaller than the job.
    assert len(events) < 80, names
    assert all(size < whole / 2 for name, _, size in events if name not in ("job", "end"))

    # Every epoch is told, even when several end between two polls: in the job event's
    # history if it ended before the stream opened (a fast worker), by an epoch event after.
    opened = events[0][1]["progress"] or {}
    already = [(m["phase"], m["epoch"]) for m in opened.get("history") or []]
    epochs = [data for name, data, _ in events if name == "epoch"]
    assert already + [(e["phase"], e["epoch"]) for e in epochs] == [
        *(("fine_tune", i) for i in range(1, 9)),
        *(("baseline", i) for i in range(1, 9)),
    ]
    assert [e["epochs_done"] for e in epochs] == list(range(len(already) + 1, 17))
    assert all(e["epochs_planned"] == 16 and e["epochs"] == 8 for e in epochs)
    assert all(e["eta_seconds"] is not None and e["eta_seconds"] >= 0 for e in epochs)
    assert epochs[-1]["eta_seconds"] == 0
    assert set(epochs[0]["metrics"]) >= {"train_loss", "val_accuracy", "seconds"}

    phases = [data for name, data, _ in events if name == "phase"]
    seen = [p["phase"] for p in phases]
    if opened.get("phase") not in (None, *seen):  # the phase it opened in: the job event's
        seen.insert(0, opened["phase"])
    assert set(seen) <= PHASES, seen
    assert "fine_tune" in seen and "baseline" in seen and seen[-1] == "done", seen
    assert seen.index("fine_tune") < seen.index("baseline")
    # Epochs come in their phase: the fine-tune's before the baseline's phase event, the
    # baseline's after it.
    order = [(name, data.get("phase")) for name, data, _ in events]
    baseline_starts = order.index(("phase", "baseline"))
    tuned = [i for i, e in enumerate(order) if e == ("epoch", "fine_tune")]
    assert max(tuned, default=-1) < baseline_starts
    assert min(i for i, e in enumerate(order) if e == ("epoch", "baseline")) > baseline_starts
    for phase in phases:  # words for people, not Python dicts
        assert phase["label"] and "{" not in phase["label"], phase
    tune = next((p for p in phases if p["phase"] == "fine_tune"), opened)
    assert tune["label"].startswith("fine-tune: manual, decay 0.5") and tune["epochs"] == 8
    for step in (data for name, data, _ in events if name == "step"):
        assert step["phase"] in ("fine_tune", "baseline") and step["step"] >= 1
        assert step["step"] <= step["steps_per_epoch"]

    # After the end, the progress is final: no ETA, no step, every epoch done.
    for progress in (final["progress"], service.get(f"/v1/jobs/{job['id']}").json()["progress"]):
        assert progress["phase"] == "done" and progress["eta_seconds"] == 0
        assert progress["epochs_done"] == progress["epochs_planned"] == 16
        assert progress["step"] is None and progress["label"].startswith("done: 16 epochs")
        assert len(progress["history"]) == 16

    # A finished job's stream: the job, then its end, at once.
    again = read_events(service, job["id"])
    assert [name for name, _, _ in again] == ["job", "end"]


def test_auto_search_phases_name_their_candidate(service: TestClient, target_id: str) -> None:
    job = start_job(
        service, target_dataset_id=target_id, source_id="best", auto_epochs=2, epochs=1,
    )  # fmt: skip
    events = read_events(service, job["id"])
    assert events[-1][1]["status"] == "succeeded"
    phases = [data for name, data, _ in events if name == "phase"]
    searches = [p for p in phases if p["phase"] == "auto_search"]
    assert searches, [p["phase"] for p in phases]
    trials = trial_epochs(FinetuneOptions().auto_search, 2)  # the default search's plan
    indices = [p["candidate_index"] for p in searches]
    assert indices == sorted(indices) and set(indices) <= set(range(1, len(trials) + 1))
    for search in searches:
        index = search["candidate_index"]
        assert re.fullmatch(rf"auto search {index}/{len(trials)}: \S.*", search["label"]), search
        assert search["candidates"] == len(trials) and isinstance(search["candidate"], dict)
        assert "{" not in search["label"]
    epochs = [data for name, data, _ in events if name == "epoch"]
    assert [e["phase"] for e in epochs] == ["auto_search"] * sum(trials) + ["fine_tune"]
    # Each search epoch says how long its own trial is (halving's later trials are longer).
    assert [e["epochs"] for e in epochs[:-1]] == [n for n in trials for _ in range(n)]
    assert epochs[0]["epochs_planned"] == sum(trials) + 1
    # A phase shorter than a poll (0.5 s) may pass unseen; its epochs never do.
    for chosen in (p for p in phases if p["phase"] == "fine_tune"):
        assert chosen["label"].startswith("fine-tune: auto's choice, ")


def test_a_cancelled_job_ends_with_a_final_progress(service: TestClient, target_id: str) -> None:
    job = start_job(
        service, target_dataset_id=target_id, source_id="best", schedule="manual",
        epochs=1000, patience=None,
    )  # fmt: skip
    running = eventually(
        lambda: (j := get_job(service, job["id"]))["progress"]["step"] and j, what="a step"
    )
    assert running["progress"]["phase"] == "fine_tune"
    assert running["progress"]["epochs_planned"] == 1000
    assert service.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    ended = wait_for_job(service, job["id"])
    assert ended["status"] == "cancelled"
    progress = ended["progress"]
    assert progress["phase"] == "cancelled" and progress["eta_seconds"] == 0
    assert progress["step"] is None and progress["label"].startswith("cancelled after")

    queued = start_job(service, target_dataset_id=target_id, source_id="best")
    assert queued["progress"]["phase"] in ("queued", "loading")
    cancelled = service.post(f"/v1/jobs/{queued['id']}/cancel").json()
    if cancelled["status"] == "cancelled":  # still queued when cancelled
        assert cancelled["progress"]["phase"] == "cancelled"
    ended = wait_for_job(service, queued["id"])
    assert ended["progress"]["phase"] == "cancelled", ended["progress"]


def test_the_docs_tell_swagger_users_the_stream_is_for_clients(service: TestClient) -> None:
    operation = service.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    text = operation["description"]
    assert "Swagger" in text and "curl -N" in text and "p2l jobs watch" in text
